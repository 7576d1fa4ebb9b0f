//! What a node does in a pipeline, derived from where its span sits in the model, and the
//! names it has on the wire and in the status document. One definition, so the registry's
//! placement, the worker's `Info` and the gateway's status agree.

use neuroshard_proto::common::v1::Role as WireRole;

/// A node's role, from its span `[start, end)` of a model of `num_layers` layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Starts at layer 0 and holds the embedding.
    Driver,
    /// Holds only decoder layers.
    Worker,
    /// Ends at the last layer and holds the final norm and LM head.
    Validator,
    /// Holds the whole model, embedding and head included.
    Full,
}

impl Role {
    /// The role of a shard that holds the embedding (`embed`) and/or the head (`head`).
    pub fn from_ends(embed: bool, head: bool) -> Self {
        match (embed, head) {
            (true, true) => Role::Full,
            (true, false) => Role::Driver,
            (false, true) => Role::Validator,
            (false, false) => Role::Worker,
        }
    }

    /// The role a span `[start, end)` implies; roles never depend on anything else, so a
    /// span's memory check only needs its bounds.
    pub fn for_span(start: u32, end: u32, num_layers: u32) -> Self {
        Self::from_ends(start == 0, end == num_layers)
    }

    /// The role on the wire.
    pub fn to_wire(self) -> WireRole {
        match self {
            Role::Driver => WireRole::Driver,
            Role::Worker => WireRole::Worker,
            Role::Validator => WireRole::Validator,
            Role::Full => WireRole::Full,
        }
    }

    /// The role a wire value names; `None` for `ROLE_UNSPECIFIED` and unknown numbers.
    pub fn from_wire(role: i32) -> Option<Self> {
        match WireRole::try_from(role).ok()? {
            WireRole::Driver => Some(Role::Driver),
            WireRole::Worker => Some(Role::Worker),
            WireRole::Validator => Some(Role::Validator),
            WireRole::Full => Some(Role::Full),
            WireRole::Unspecified => None,
        }
    }

    /// The name the status document and dashboard use.
    pub fn name(self) -> &'static str {
        match self {
            Role::Driver => "driver",
            Role::Worker => "worker",
            Role::Validator => "validator",
            Role::Full => "full",
        }
    }
}

/// The status document's name for a wire role: a node without a span is `unassigned`.
pub fn wire_role_name(role: i32) -> &'static str {
    Role::from_wire(role).map_or("unassigned", Role::name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_follow_the_span_and_survive_the_wire() {
        assert_eq!(Role::for_span(0, 4, 4), Role::Full);
        assert_eq!(Role::for_span(0, 2, 4), Role::Driver);
        assert_eq!(Role::for_span(2, 4, 4), Role::Validator);
        assert_eq!(Role::for_span(1, 3, 4), Role::Worker);
        for role in [Role::Driver, Role::Worker, Role::Validator, Role::Full] {
            assert_eq!(Role::from_wire(role.to_wire() as i32), Some(role));
        }
        assert_eq!(Role::from_wire(WireRole::Unspecified as i32), None);
        assert_eq!(Role::from_wire(99), None);
        assert_eq!(wire_role_name(WireRole::Validator as i32), "validator");
        assert_eq!(wire_role_name(0), "unassigned");
    }
}
