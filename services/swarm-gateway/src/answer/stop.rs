//! Stop sequences over streamed text. Text is released as soon as it cannot be the start of a
//! stop sequence; only a tail that could still grow into one is held back. A stop sequence
//! split across tokens is caught, and neither it nor anything after it is ever released.

/// Finds the first stop sequence in text that arrives in pieces.
#[derive(Debug, Clone, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    /// Text received but not released: a proper prefix of some stop sequence.
    held: String,
}

/// What one piece of text produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Released {
    /// Text now safe to send.
    pub text: String,
    /// A stop sequence was found; `text` ends right before it and the generation is over.
    pub stopped: bool,
}

impl StopMatcher {
    /// `stops` must not contain empty strings (request validation refuses them).
    pub fn new(stops: Vec<String>) -> Self {
        Self {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            held: String::new(),
        }
    }

    /// Adds `piece` and returns what can be released.
    pub fn push(&mut self, piece: &str) -> Released {
        self.held.push_str(piece);
        // Any stop sequence that ends in this text starts inside `held`: everything before
        // `held` was released only because no stop sequence could start there.
        let first = self
            .stops
            .iter()
            .filter_map(|stop| self.held.find(stop.as_str()))
            .min();
        if let Some(at) = first {
            let mut text = std::mem::take(&mut self.held);
            text.truncate(at);
            return Released {
                text,
                stopped: true,
            };
        }
        let keep = self.longest_stop_prefix_suffix();
        let text = self.held[..self.held.len() - keep].to_owned();
        self.held.drain(..self.held.len() - keep);
        Released {
            text,
            stopped: false,
        }
    }

    /// The generation ended without a stop sequence: whatever was held back is text after all.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// Length in bytes of the longest suffix of `held` that is a proper prefix of a stop
    /// sequence (always at a character boundary, since the stop sequence is a string).
    fn longest_stop_prefix_suffix(&self) -> usize {
        let mut best = 0;
        for stop in &self.stops {
            let most = stop.len().saturating_sub(1).min(self.held.len());
            for len in (best + 1..=most).rev() {
                let start = self.held.len() - len;
                if self.held.is_char_boundary(start) && stop.starts_with(&self.held[start..]) {
                    best = len;
                    break;
                }
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (Vec<String>, bool, String) {
        let mut m = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = Vec::new();
        for piece in pieces {
            let r = m.push(piece);
            out.push(r.text);
            if r.stopped {
                return (out, true, String::new());
            }
        }
        let tail = m.finish();
        (out, false, tail)
    }

    #[test]
    fn no_stops_releases_everything_at_once() {
        let (out, stopped, tail) = run(&[], &["to be", " or not"]);
        assert_eq!(out, ["to be", " or not"]);
        assert!(!stopped);
        assert_eq!(tail, "");
    }

    #[test]
    fn stop_inside_one_piece_cuts_it() {
        let (out, stopped, _) = run(&["\n\n"], &["Hamlet", " speaks.\n\nExit"]);
        assert_eq!(out, ["Hamlet", " speaks."]);
        assert!(stopped);
    }

    #[test]
    fn stop_split_across_pieces_is_caught_and_held_back_meanwhile() {
        // "END" arrives as "E", "N", "D": nothing of it is ever released.
        let (out, stopped, _) = run(&["END"], &["the ", "E", "N", "D", " more"]);
        assert_eq!(out, ["the ", "", "", ""]);
        assert!(stopped);
    }

    #[test]
    fn a_false_start_is_released_once_it_cannot_match() {
        let (out, stopped, tail) = run(&["END"], &["the E", "NX", " done"]);
        assert_eq!(out, ["the ", "ENX", " done"]);
        assert!(!stopped);
        assert_eq!(tail, "");
    }

    #[test]
    fn held_text_is_released_at_the_end() {
        let (out, stopped, tail) = run(&["END"], &["fin", "EN"]);
        assert_eq!(out, ["fin", ""]);
        assert!(!stopped);
        assert_eq!(tail, "EN");
    }

    #[test]
    fn the_earliest_of_several_stops_wins() {
        let (out, stopped, _) = run(&["cd", "b"], &["abcd"]);
        assert_eq!(out, ["a"]);
        assert!(stopped);
        // Overlapping candidates: "xxy" must be found even though "xx" was held as a prefix.
        let (out, stopped, _) = run(&["xxy"], &["ax", "x", "xy"]);
        assert_eq!(out.concat(), "ax");
        assert!(stopped);
    }

    #[test]
    fn multibyte_stops_and_text_stay_whole() {
        let (out, stopped, _) = run(&["ü!"], &["grün", "ü", "!"]);
        assert_eq!(out.concat(), "grün");
        assert!(stopped);
        let (out, _, tail) = run(&["éa"], &["café", "é"]);
        assert_eq!(out, ["caf", "é"]);
        assert_eq!(tail, "é");
    }

    proptest::proptest! {
        /// Whatever the split, generation stops at the first piece after which the text holds
        /// a stop sequence, and the output is that text cut right before the earliest stop
        /// in it (a longer stop that would have started earlier but completes only with a
        /// later piece never gets the chance); with no stop the output is all the input.
        #[test]
        fn output_is_the_input_cut_at_the_first_stop(
            pieces in proptest::collection::vec("[abcé]{0,4}", 0..12),
            stops in proptest::collection::vec("[abcé]{1,3}", 0..3),
        ) {
            let earliest = |text: &str| stops.iter().filter_map(|s| text.find(s.as_str())).min();
            let mut seen = String::new();
            let mut cut = None;
            for piece in &pieces {
                seen.push_str(piece);
                if let Some(at) = earliest(&seen) {
                    cut = Some(at);
                    break;
                }
            }
            let all = if cut.is_some() { seen } else { pieces.concat() };
            let first = cut;
            let stop_refs: Vec<&str> = stops.iter().map(String::as_str).collect();
            let piece_refs: Vec<&str> = pieces.iter().map(String::as_str).collect();
            let (out, stopped, tail) = run(&stop_refs, &piece_refs);
            let output = out.concat() + &tail;
            match first {
                Some(at) => {
                    proptest::prop_assert!(stopped);
                    proptest::prop_assert_eq!(output, &all[..at]);
                }
                None => {
                    proptest::prop_assert!(!stopped);
                    proptest::prop_assert_eq!(output, all);
                }
            }
        }
    }
}
