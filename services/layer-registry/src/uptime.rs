//! Uptime from heartbeats, pure: the live time each heartbeat adds to the epochs it spans,
//! and when an epoch's figure is final (so an attestation of it never changes).

use neuroshard_common::{Error, Result};

/// The live time a heartbeat at `now_ms` adds after the previous one at `previous_ms`: the
/// gap, split over the `epoch_ms`-long epochs it spans, as `(epoch start, ms)`. A gap longer
/// than `dead_after_ms` adds nothing: the node was dead in between, and a silence is not
/// uptime.
pub fn accrue(previous_ms: i64, now_ms: i64, epoch_ms: i64, dead_after_ms: i64) -> Vec<(i64, i64)> {
    if epoch_ms <= 0 || now_ms <= previous_ms || now_ms - previous_ms > dead_after_ms {
        return Vec::new();
    }
    let mut parts = Vec::new();
    let mut from = previous_ms;
    while from < now_ms {
        let start = epoch_of(from, epoch_ms);
        let end = start.saturating_add(epoch_ms).min(now_ms);
        parts.push((start, end - from));
        from = end;
    }
    parts
}

/// The start of the epoch `unix_ms` falls in.
pub fn epoch_of(unix_ms: i64, epoch_ms: i64) -> i64 {
    unix_ms - unix_ms.rem_euclid(epoch_ms)
}

/// Whether the epoch starting at `start` may be attested at `now_ms`: a start on the epoch
/// grid, and ended at least `dead_after_ms` ago — the last heartbeat gap that can still add
/// to it is at most that long, so its figure is final.
pub fn check_final(start: i64, epoch_ms: i64, dead_after_ms: i64, now_ms: i64) -> Result<()> {
    if start < 0 || start.rem_euclid(epoch_ms) != 0 {
        return Err(Error::invalid_argument(format!(
            "epoch_start_unix_ms: {start} is not a multiple of the {epoch_ms} ms uptime epoch"
        )));
    }
    let final_at = start.saturating_add(epoch_ms).saturating_add(dead_after_ms);
    if now_ms < final_at {
        return Err(Error::failed_precondition(format!(
            "the epoch starting at unix ms {start} is final at unix ms {final_at} ({} s from now)",
            (final_at - now_ms + 999) / 1000
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gap_is_split_over_the_epochs_it_spans() {
        assert_eq!(accrue(1_000, 4_000, 10_000, 30_000), vec![(0, 3_000)]);
        assert_eq!(
            accrue(8_000, 12_500, 10_000, 30_000),
            vec![(0, 2_000), (10_000, 2_500)]
        );
        assert_eq!(
            accrue(9_000, 31_000, 10_000, 30_000),
            vec![
                (0, 1_000),
                (10_000, 10_000),
                (20_000, 10_000),
                (30_000, 1_000)
            ]
        );
        let total: i64 = accrue(9_000, 31_000, 10_000, 30_000)
            .iter()
            .map(|p| p.1)
            .sum();
        assert_eq!(total, 22_000);
    }

    #[test]
    fn silence_longer_than_the_dead_threshold_and_clock_steps_back_add_nothing() {
        assert!(accrue(0, 30_001, 10_000, 30_000).is_empty());
        assert_eq!(accrue(0, 30_000, 100_000, 30_000), vec![(0, 30_000)]);
        assert!(accrue(5_000, 5_000, 10_000, 30_000).is_empty());
        assert!(accrue(5_000, 4_000, 10_000, 30_000).is_empty());
    }

    #[test]
    fn an_epoch_is_attested_once_no_heartbeat_can_add_to_it() {
        assert_eq!(epoch_of(12_345, 10_000), 10_000);
        assert!(check_final(10_000, 10_000, 3_000, 23_000).is_ok());
        let open = check_final(10_000, 10_000, 3_000, 22_999).unwrap_err();
        assert!(
            open.message.contains("final at unix ms 23000"),
            "{}",
            open.message
        );
        let off_grid = check_final(10_001, 10_000, 3_000, 99_999).unwrap_err();
        assert!(
            off_grid.message.contains("not a multiple"),
            "{}",
            off_grid.message
        );
    }
}
