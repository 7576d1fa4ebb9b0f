//! The order in which a pipeline's stages run the micro-batches of one inner step, and what
//! that order costs: the Driver runs each stage's operations in [`stage_ops`] order, an
//! operation starting once the one it depends on (the same micro-batch's forward on the stage
//! before, its backward on the stage after) is done. [`simulate`] replays that on costs, which
//! gives the step's length and each stage's idle time (the pipeline bubble).
//!
//! Two schedules:
//! - **GPipe**: every forward, then every backward. Each stage holds the activations of all
//!   `m` micro-batches at once.
//! - **1F1B** (one forward, one backward): stage `s` of `n` runs `n − 1 − s` forwards ahead,
//!   then alternates, then drains. The same bubble as GPipe, `(n − 1) / (m + n − 1)` of the
//!   step with equal costs, but stage `s` holds at most `n − s` micro-batches' activations,
//!   whatever `m`: more micro-batches shrink the bubble without growing memory, which is
//!   why pipelines train with it.
//!
//! Backward runs in micro-batch order on every stage in both, so gradients add up in the
//! order a single-process trainer accumulates them (a pipelined step equals it to rounding).
//! Pure: no I/O, no tensors.

/// One operation of a stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Forward(u32),
    Backward(u32),
}

/// How a step's micro-batches are ordered on each stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    GPipe,
    OneForwardOneBackward,
}

/// The operations stage `stage` of `stages` runs, in order, for `micro_batches`.
pub fn stage_ops(schedule: Schedule, stages: u32, stage: u32, micro_batches: u32) -> Vec<Op> {
    let m = micro_batches;
    match schedule {
        Schedule::GPipe => (0..m)
            .map(Op::Forward)
            .chain((0..m).map(Op::Backward))
            .collect(),
        Schedule::OneForwardOneBackward => {
            let ahead = (stages - 1 - stage.min(stages - 1)).min(m);
            let mut ops: Vec<Op> = (0..ahead).map(Op::Forward).collect();
            // Steady state: forward micro-batch `ahead + i`, then backward `i`.
            for i in 0..m - ahead {
                ops.push(Op::Forward(ahead + i));
                ops.push(Op::Backward(i));
            }
            ops.extend((m - ahead..m).map(Op::Backward));
            ops
        }
    }
}

/// What replaying a schedule on costs gives.
#[derive(Debug, Clone, PartialEq)]
pub struct Simulation {
    /// From the first forward's start to the last backward's end.
    pub makespan: f64,
    /// Per stage: the fraction of the makespan it was not computing.
    pub idle: Vec<f64>,
    /// Per stage: the most micro-batches whose activations it held at once (forwarded, not
    /// yet backwarded).
    pub peak_in_flight: Vec<u32>,
}

impl Simulation {
    /// The pipeline bubble: the mean idle fraction over stages.
    pub fn bubble(&self) -> f64 {
        self.idle.iter().sum::<f64>() / self.idle.len().max(1) as f64
    }
}

/// Replays `schedule` on `stages` stages and `micro_batches` micro-batches, where a forward
/// on stage `s` takes `forward[s]` and a backward `backward[s]` (any unit), and a transfer
/// between stages takes `transfer`. Each stage runs its operations in order, each as soon as
/// the stage is free and its input has arrived.
pub fn simulate(
    schedule: Schedule,
    micro_batches: u32,
    forward: &[f64],
    backward: &[f64],
    transfer: f64,
) -> Simulation {
    let n = forward.len().min(backward.len());
    let m = micro_batches as usize;
    let ops: Vec<Vec<Op>> = (0..n)
        .map(|s| stage_ops(schedule, n as u32, s as u32, micro_batches))
        .collect();
    // End times of each (stage, micro-batch) forward and backward, once known.
    let mut forward_end = vec![vec![None::<f64>; m]; n];
    let mut backward_end = vec![vec![None::<f64>; m]; n];
    let mut next = vec![0usize; n];
    let mut free_at = vec![0.0f64; n];
    let mut busy = vec![0.0f64; n];
    let mut in_flight = vec![0u32; n];
    let mut peak = vec![0u32; n];
    // Each pass starts every operation whose input is ready; the schedules never deadlock,
    // so every pass makes progress until all are done.
    let total: usize = ops.iter().map(Vec::len).sum();
    let mut done = 0;
    while done < total {
        let before = done;
        for s in 0..n {
            while let Some(&op) = ops[s].get(next[s]) {
                let ready = match op {
                    Op::Forward(mb) => {
                        if s == 0 {
                            Some(0.0)
                        } else {
                            forward_end[s - 1][mb as usize].map(|t| t + transfer)
                        }
                    }
                    Op::Backward(mb) => {
                        if s + 1 == n {
                            forward_end[s][mb as usize]
                        } else {
                            backward_end[s + 1][mb as usize].map(|t| t + transfer)
                        }
                    }
                };
                let Some(ready) = ready else { break };
                let start = ready.max(free_at[s]);
                let (cost, slot) = match op {
                    Op::Forward(mb) => {
                        in_flight[s] += 1;
                        peak[s] = peak[s].max(in_flight[s]);
                        (forward[s], &mut forward_end[s][mb as usize])
                    }
                    Op::Backward(mb) => {
                        in_flight[s] -= 1;
                        (backward[s], &mut backward_end[s][mb as usize])
                    }
                };
                *slot = Some(start + cost);
                free_at[s] = start + cost;
                busy[s] += cost;
                next[s] += 1;
                done += 1;
            }
        }
        if done == before {
            // Unreachable for the schedules above (their orders respect the dependencies);
            // stop rather than spin if a future one did not.
            break;
        }
    }
    let makespan = free_at.iter().copied().fold(0.0, f64::max);
    Simulation {
        makespan,
        idle: busy
            .iter()
            .map(|b| {
                if makespan > 0.0 {
                    1.0 - b / makespan
                } else {
                    0.0
                }
            })
            .collect(),
        peak_in_flight: peak,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEDULES: [Schedule; 2] = [Schedule::GPipe, Schedule::OneForwardOneBackward];

    #[test]
    fn every_stage_runs_each_micro_batch_once_each_way_backward_in_order() {
        for schedule in SCHEDULES {
            for stages in 1..6 {
                for m in 1..9 {
                    for s in 0..stages {
                        let ops = stage_ops(schedule, stages, s, m);
                        assert_eq!(ops.len(), 2 * m as usize);
                        let forwards: Vec<u32> = ops
                            .iter()
                            .filter_map(|o| match o {
                                Op::Forward(mb) => Some(*mb),
                                Op::Backward(_) => None,
                            })
                            .collect();
                        let backwards: Vec<u32> = ops
                            .iter()
                            .filter_map(|o| match o {
                                Op::Backward(mb) => Some(*mb),
                                Op::Forward(_) => None,
                            })
                            .collect();
                        let order: Vec<u32> = (0..m).collect();
                        assert_eq!(forwards, order, "{schedule:?} {stages}/{s} m={m}");
                        assert_eq!(backwards, order, "{schedule:?} {stages}/{s} m={m}");
                        // A micro-batch's backward never comes before its forward.
                        for mb in 0..m {
                            let f = ops.iter().position(|o| *o == Op::Forward(mb));
                            let b = ops.iter().position(|o| *o == Op::Backward(mb));
                            assert!(f < b, "{schedule:?} {stages}/{s} m={m} mb={mb}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn one_f_one_b_on_four_stages() {
        use Op::{Backward as B, Forward as F};
        assert_eq!(
            stage_ops(Schedule::OneForwardOneBackward, 4, 0, 4),
            [F(0), F(1), F(2), F(3), B(0), B(1), B(2), B(3)]
        );
        assert_eq!(
            stage_ops(Schedule::OneForwardOneBackward, 4, 2, 4),
            [F(0), F(1), B(0), F(2), B(1), F(3), B(2), B(3)]
        );
        assert_eq!(
            stage_ops(Schedule::OneForwardOneBackward, 4, 3, 4),
            [F(0), B(0), F(1), B(1), F(2), B(2), F(3), B(3)]
        );
    }

    #[test]
    fn equal_costs_give_the_textbook_bubble_and_1f1b_bounds_memory() {
        for (stages, m) in [(2u32, 4u32), (3, 4), (4, 8), (4, 16)] {
            let n = stages as usize;
            let (f, b) = (vec![1.0; n], vec![2.0; n]);
            let expected = f64::from(stages - 1) / f64::from(m + stages - 1);
            let gpipe = simulate(Schedule::GPipe, m, &f, &b, 0.0);
            let one = simulate(Schedule::OneForwardOneBackward, m, &f, &b, 0.0);
            for sim in [&gpipe, &one] {
                assert!(
                    (sim.makespan - 3.0 * f64::from(m + stages - 1)).abs() < 1e-9,
                    "{sim:?}"
                );
                assert!((sim.bubble() - expected).abs() < 1e-9, "{sim:?}");
            }
            assert!(gpipe.peak_in_flight.iter().all(|&p| p == m));
            for (s, &p) in one.peak_in_flight.iter().enumerate() {
                assert_eq!(p, (stages - s as u32).min(m), "stage {s}: {one:?}");
            }
        }
    }

    #[test]
    fn a_slow_stage_makes_the_others_wait() {
        let sim = simulate(
            Schedule::OneForwardOneBackward,
            8,
            &[1.0, 3.0],
            &[2.0, 6.0],
            0.0,
        );
        assert!(sim.idle[0] > sim.idle[1], "{sim:?}");
        assert!(sim.idle[1] < 0.15, "{sim:?}");
        // Transfers lengthen the step.
        let slower = simulate(
            Schedule::OneForwardOneBackward,
            8,
            &[1.0, 3.0],
            &[2.0, 6.0],
            0.5,
        );
        assert!(slower.makespan > sim.makespan);
    }
}
