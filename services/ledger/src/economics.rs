//! The economics (DESIGN §7), every number configurable, and the pure integer arithmetic that
//! turns them into amounts: rewards with role and stake multipliers and caps, the transfer
//! burn, the inference price from smoothed utilisation, the settlement split and the slash.
//! Multipliers are parts per million, shares basis points; nothing here is floating point.

use neuroshard_common::Error;
use neuroshard_common::role::Role;
use serde::{Deserialize, Serialize};

use crate::amount::{Amount, NANO_PER_NEURO};

const PPM: u128 = 1_000_000;
const BPS: u128 = 10_000;
const DAY_MS: i64 = 86_400_000;

/// Reward multipliers per role, parts per million.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoleMultipliers {
    pub driver_ppm: u64,
    pub worker_ppm: u64,
    pub validator_ppm: u64,
    /// A node holding the whole model (embedding, layers and head).
    pub full_ppm: u64,
}

impl Default for RoleMultipliers {
    fn default() -> Self {
        Self {
            driver_ppm: 1_000_000,
            worker_ppm: 800_000,
            validator_ppm: 1_200_000,
            full_ppm: 1_000_000,
        }
    }
}

impl RoleMultipliers {
    pub fn of(&self, role: Role) -> u64 {
        match role {
            Role::Driver => self.driver_ppm,
            Role::Worker => self.worker_ppm,
            Role::Validator => self.validator_ppm,
            Role::Full => self.full_ppm,
        }
    }
}

/// The `[economics]` section. Amounts are nano-NEURO.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Economics {
    /// Training reward per batch per layer held (0.0005 NEURO).
    pub training_reward_per_batch_layer: i64,
    /// Tokens in one batch: a receipt's tokens / this = the batches it pays for.
    pub tokens_per_batch: u64,
    /// Plausibility: the most tokens one receipt may claim.
    pub max_tokens_per_proof: u64,
    /// Plausibility: a receipt's tokens may be at most this many times what the node's
    /// registered capacity (tokens/s, a one-layer forward measured at start) processes in
    /// the time the round had been open. Training is slower than that figure per layer, but
    /// batching on a GPU can beat it: the margin is wide, against gross inflation.
    pub plausibility_factor: u64,
    /// Data reward per sample fed into training (0.00001 NEURO), paid to the stage that
    /// reads the data (the span from layer 0), a sample being `tokens_per_sample` tokens.
    pub data_reward_per_sample: i64,
    pub tokens_per_sample: u64,
    /// Uptime reward per minute of registry-attested uptime (0.0001 NEURO).
    pub uptime_reward_per_minute: i64,
    /// The length of the epochs uptime is attested and paid in (the registry's
    /// `uptime_epoch_ms` must match): one uptime proof per node and epoch.
    pub uptime_epoch_ms: i64,
    /// An escrow its gateway has not settled this long after it opened is refunded to the
    /// payer (a gateway that crashed mid-request must not lock the user's NEURO forever).
    pub escrow_ttl_ms: i64,
    pub roles: RoleMultipliers,
    /// Stake multiplier 1 + coefficient · log2(1 + stake / unit).
    pub stake_coefficient_ppm: u64,
    pub stake_unit: i64,
    /// Caps: per proof, and per node per UTC day (what exceeds them is not minted).
    pub cap_per_proof: i64,
    pub cap_per_node_day: i64,
    /// Burned from every transfer and every inference charge, basis points.
    pub fee_burn_bps: u64,
    /// The inference revenue left after the burn: Driver, processors, Validator (sum 10,000).
    pub driver_share_bps: u64,
    pub processors_share_bps: u64,
    pub validator_share_bps: u64,
    /// Price per token = base × (1 + u)², u smoothed: u ← ema·u + (1 − ema)·u_reported.
    pub base_price_per_token: i64,
    pub utilisation_ema_ppm: u64,
    /// How long a stake stays locked after the latest addition.
    pub stake_lock_ms: i64,
    /// A proven fraud takes this share of the node's stake; the reporter gets its share of
    /// that, the rest is burned.
    pub slash_bps: u64,
    pub slash_reporter_bps: u64,
}

impl Default for Economics {
    fn default() -> Self {
        Self {
            training_reward_per_batch_layer: 500_000,
            tokens_per_batch: 512,
            max_tokens_per_proof: 100_000_000,
            plausibility_factor: 32,
            data_reward_per_sample: 10_000,
            tokens_per_sample: 256,
            uptime_reward_per_minute: 100_000,
            uptime_epoch_ms: 3_600_000,
            escrow_ttl_ms: 3_600_000,
            roles: RoleMultipliers::default(),
            stake_coefficient_ppm: 100_000,
            stake_unit: 1_000 * NANO_PER_NEURO,
            cap_per_proof: 100 * NANO_PER_NEURO,
            cap_per_node_day: 10_000 * NANO_PER_NEURO,
            fee_burn_bps: 500,
            driver_share_bps: 1_500,
            processors_share_bps: 7_000,
            validator_share_bps: 1_500,
            base_price_per_token: 1_000,
            utilisation_ema_ppm: 800_000,
            stake_lock_ms: 30 * DAY_MS,
            slash_bps: 5_000,
            slash_reporter_bps: 5_000,
        }
    }
}

impl Economics {
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |m: &str| Err(Error::invalid_argument(format!("economics.{m}")));
        if self.training_reward_per_batch_layer < 0
            || self.base_price_per_token < 0
            || self.data_reward_per_sample < 0
            || self.uptime_reward_per_minute < 0
        {
            return bad("rewards and prices must not be negative");
        }
        if self.tokens_per_batch == 0 || self.tokens_per_sample == 0 {
            return bad("tokens_per_batch and tokens_per_sample must be at least 1");
        }
        if self.plausibility_factor == 0 {
            return bad("plausibility_factor must be at least 1");
        }
        if self.escrow_ttl_ms < 1_000 {
            return bad("escrow_ttl_ms must be at least 1000");
        }
        if self.uptime_epoch_ms < 1_000 {
            return bad("uptime_epoch_ms must be at least 1000");
        }
        if self.stake_unit <= 0 {
            return bad("stake_unit must be positive");
        }
        if self.cap_per_proof < 0 || self.cap_per_node_day < 0 || self.stake_lock_ms < 0 {
            return bad("caps and stake_lock_ms must not be negative");
        }
        if self.driver_share_bps + self.processors_share_bps + self.validator_share_bps != 10_000 {
            return bad(
                "driver_share_bps + processors_share_bps + validator_share_bps must be 10000",
            );
        }
        for (name, v) in [
            ("fee_burn_bps", self.fee_burn_bps),
            ("slash_bps", self.slash_bps),
            ("slash_reporter_bps", self.slash_reporter_bps),
        ] {
            if v > 10_000 {
                return Err(Error::invalid_argument(format!(
                    "economics.{name} must be at most 10000 (100%)"
                )));
            }
        }
        if self.utilisation_ema_ppm >= 1_000_000 {
            return bad("utilisation_ema_ppm must be below 1000000 (new readings must count)");
        }
        Ok(())
    }

    /// 1 + coefficient · log2(1 + stake / unit), parts per million.
    pub fn stake_multiplier_ppm(&self, stake: Amount) -> u64 {
        let stake = u128::try_from(stake.nano().max(0)).unwrap_or(0);
        let unit = u128::try_from(self.stake_unit).unwrap_or(1);
        let log = log2_q32(unit + stake, unit);
        let extra = (u128::from(self.stake_coefficient_ppm) * log) >> 32;
        1_000_000u64.saturating_add(u64::try_from(extra).unwrap_or(u64::MAX))
    }

    /// The training reward for `tokens` of work on `layers` layers in `role`, with `stake`
    /// (and the data reward when the span `fed_data`, i.e. starts at layer 0), before the
    /// per-day cap: (uncapped, capped per proof).
    pub fn training_reward(
        &self,
        tokens: u64,
        layers: u32,
        role: Role,
        stake: Amount,
        fed_data: bool,
    ) -> Result<(Amount, Amount), Error> {
        let batches = u128::from(tokens / self.tokens_per_batch);
        let training = Amount::from_nano(self.training_reward_per_batch_layer)
            .mul_div_floor(batches * u128::from(layers), 1)?;
        let data = if fed_data {
            Amount::from_nano(self.data_reward_per_sample)
                .mul_div_floor(u128::from(tokens / self.tokens_per_sample), 1)?
        } else {
            Amount::ZERO
        };
        let with_role = training
            .checked_add(data)?
            .mul_div_floor(u128::from(self.roles.of(role)), PPM)?;
        self.with_stake_and_cap(with_role, stake)
    }

    /// The uptime reward for `uptime_ms` of attested uptime, with `stake`, before the per-day
    /// cap: (uncapped, capped per proof), pro rata to the millisecond (rounded down).
    pub fn uptime_reward(&self, uptime_ms: u64, stake: Amount) -> Result<(Amount, Amount), Error> {
        let base = Amount::from_nano(self.uptime_reward_per_minute)
            .mul_div_floor(u128::from(uptime_ms), 60_000)?;
        self.with_stake_and_cap(base, stake)
    }

    fn with_stake_and_cap(&self, base: Amount, stake: Amount) -> Result<(Amount, Amount), Error> {
        let uncapped = base.mul_div_floor(u128::from(self.stake_multiplier_ppm(stake)), PPM)?;
        Ok((
            uncapped,
            uncapped.min(Amount::from_nano(self.cap_per_proof)),
        ))
    }

    /// The most tokens a receipt may claim for a node of `capacity_milli` (registered
    /// tokens/s × 1000) after `elapsed_ms` of the round.
    pub fn plausible_tokens(&self, capacity_milli: u64, elapsed_ms: u64) -> u64 {
        let most = u128::from(capacity_milli)
            * u128::from(elapsed_ms)
            * u128::from(self.plausibility_factor)
            / 1_000_000;
        u64::try_from(most).unwrap_or(u64::MAX)
    }

    /// What still fits under the node's daily cap after `paid_today`.
    pub fn day_room(&self, paid_today: Amount) -> Amount {
        Amount::from_nano((self.cap_per_node_day - paid_today.nano()).max(0))
    }

    /// The burn on `amount` (rounded up, so small amounts cannot dodge it).
    pub fn fee(&self, amount: Amount) -> Result<Amount, Error> {
        amount.mul_div_ceil(u128::from(self.fee_burn_bps), BPS)
    }

    /// u ← ema·u + (1 − ema)·reported, parts per million (reported capped at 100×).
    pub fn smooth_utilisation(&self, current_ppm: u64, reported_ppm: u64) -> u64 {
        let reported = u128::from(reported_ppm.min(100 * 1_000_000));
        let ema = u128::from(self.utilisation_ema_ppm);
        let next = (ema * u128::from(current_ppm) + (PPM - ema) * reported) / PPM;
        u64::try_from(next).unwrap_or(u64::MAX)
    }

    /// base × (1 + u)², at least 1 nano when the base is not zero.
    pub fn price_per_token(&self, utilisation_ppm: u64) -> Result<Amount, Error> {
        let factor = PPM + u128::from(utilisation_ppm);
        let price = Amount::from_nano(self.base_price_per_token)
            .mul_div_floor(factor * factor, PPM * PPM)?;
        Ok(if self.base_price_per_token > 0 {
            price.max(Amount::from_nano(1))
        } else {
            price
        })
    }

    /// The slash of `stake`: (to the reporter, burned).
    pub fn slash(&self, stake: Amount) -> Result<(Amount, Amount), Error> {
        let taken = stake.mul_div_floor(u128::from(self.slash_bps), BPS)?;
        let reporter = taken.mul_div_floor(u128::from(self.slash_reporter_bps), BPS)?;
        Ok((reporter, taken.checked_sub(reporter)?))
    }

    /// The split of an inference charge after its burn: (burn, Driver, each processor's
    /// share in order, Validator). Parts sum to `charge` exactly: rounding leftovers go to
    /// the processors, the first ones first.
    pub fn split(&self, charge: Amount, processors: usize) -> Result<Split, Error> {
        let burn = self.fee(charge)?;
        let rest = charge.checked_sub(burn)?;
        let driver = rest.mul_div_floor(u128::from(self.driver_share_bps), BPS)?;
        let validator = rest.mul_div_floor(u128::from(self.validator_share_bps), BPS)?;
        let pool = rest.checked_sub(driver)?.checked_sub(validator)?;
        let mut shares = Vec::with_capacity(processors);
        if processors > 0 {
            let n = processors as i64;
            let (each, mut left) = (pool.nano() / n, pool.nano() % n);
            for _ in 0..processors {
                let extra = i64::from(left > 0);
                left -= extra;
                shares.push(Amount::from_nano(each + extra));
            }
        }
        // Without processors their pool goes to the Driver (it ran every layer there was).
        let driver = if processors == 0 {
            driver.checked_add(pool)?
        } else {
            driver
        };
        Ok(Split {
            burn,
            driver,
            processors: shares,
            validator,
        })
    }

    /// The UTC day a moment falls in (the per-day cap's key).
    pub fn day_of(unix_ms: i64) -> i64 {
        unix_ms.div_euclid(DAY_MS)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    pub burn: Amount,
    pub driver: Amount,
    pub processors: Vec<Amount>,
    pub validator: Amount,
}

/// log2(num / den) for num ≥ den > 0, as a Q32 fixed-point number (bit-by-bit: square the
/// mantissa, each doubling past 2 is a one bit), exact to 2⁻³².
fn log2_q32(num: u128, den: u128) -> u128 {
    if den == 0 || num <= den {
        return 0;
    }
    // Integer part: the largest k with den·2^k ≤ num.
    let mut k = 0u32;
    while num >> (k + 1) >= den {
        k += 1;
    }
    // Mantissa m = num / (den·2^k) ∈ [1, 2) in Q62.
    const ONE: u128 = 1 << 62;
    let scaled_den = den << k;
    let mut m = (num / scaled_den) * ONE + ((num % scaled_den) * ONE) / scaled_den;
    let mut result = u128::from(k) << 32;
    for bit in (0..32).rev() {
        m = (m * m) >> 62;
        if m >= 2 * ONE {
            m >>= 1;
            result |= 1 << bit;
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log2_is_exact_enough() {
        assert_eq!(log2_q32(8, 1), 3 << 32);
        assert_eq!(log2_q32(1, 1), 0);
        // log2(3) = 1.5849625007...
        let l = log2_q32(3, 1) as f64 / 2f64.powi(32);
        assert!((l - 1.584_962_500_7).abs() < 1e-9, "{l}");
        let l = log2_q32(1_000_000_001, 1_000_000_000) as f64 / 2f64.powi(32);
        assert!((l - 1.442_695e-9).abs() < 1e-9, "{l}");
    }

    #[test]
    fn stake_multiplier_follows_the_design() {
        let e = Economics::default();
        assert_eq!(e.stake_multiplier_ppm(Amount::ZERO), 1_000_000);
        // 1000 NEURO staked: 1 + 0.1 · log2(2) = 1.1.
        assert_eq!(e.stake_multiplier_ppm(Amount::neuro(1_000)), 1_100_000);
        // 3000: 1 + 0.1 · 2 = 1.2.
        assert_eq!(e.stake_multiplier_ppm(Amount::neuro(3_000)), 1_200_000);
    }

    #[test]
    fn training_reward_per_batch_per_layer_with_multipliers_and_cap() {
        let e = Economics::default();
        // 10 batches × 4 layers × 0.0005 = 0.02 NEURO; Worker 0.8 → 0.016.
        let (r, capped) = e
            .training_reward(10 * 512 + 100, 4, Role::Worker, Amount::ZERO, false)
            .unwrap();
        assert_eq!(r, Amount::from_nano(16_000_000));
        assert_eq!(capped, r);
        // Validator with 1000 staked: 0.02 × 1.2 × 1.1 = 0.0264.
        let (r, _) = e
            .training_reward(10 * 512, 4, Role::Validator, Amount::neuro(1_000), false)
            .unwrap();
        assert_eq!(r, Amount::from_nano(26_400_000));
        // 1M batches on 32 layers is far over the 100 NEURO cap per proof.
        let (r, capped) = e
            .training_reward(512_000_000, 32, Role::Driver, Amount::ZERO, true)
            .unwrap();
        assert!(r > capped);
        assert_eq!(capped, Amount::neuro(100));
        assert_eq!(e.day_room(Amount::neuro(9_990)), Amount::neuro(10));
        assert_eq!(e.day_room(Amount::neuro(20_000)), Amount::ZERO);
    }

    #[test]
    fn data_and_uptime_rewards_follow_the_design() {
        let e = Economics::default();
        // The stage that fed the data: 10 batches × 2 layers × 0.0005 = 0.01, plus
        // 20 samples of 256 tokens × 0.00001 = 0.0002; Driver 1.0.
        let (r, _) = e
            .training_reward(10 * 512, 2, Role::Driver, Amount::ZERO, true)
            .unwrap();
        assert_eq!(r, Amount::from_nano(10_200_000));
        // 0.0001 NEURO a minute, pro rata, rounded down: 3,599,999 ms → 5,999,998.3 nano.
        let (r, capped) = e.uptime_reward(3_599_999, Amount::ZERO).unwrap();
        assert_eq!(r, Amount::from_nano(5_999_998));
        assert_eq!(capped, r);
        // With 3000 staked: × 1.2.
        let (r, _) = e.uptime_reward(60_000, Amount::neuro(3_000)).unwrap();
        assert_eq!(r, Amount::from_nano(120_000));
    }

    #[test]
    fn plausible_tokens_scale_with_capacity_and_time() {
        let e = Economics::default();
        // 1000 tokens/s for 2.5 s, ×32.
        assert_eq!(e.plausible_tokens(1_000_000, 2_500), 80_000);
        assert_eq!(e.plausible_tokens(0, 2_500), 0);
        assert_eq!(e.plausible_tokens(u64::MAX, u64::MAX), u64::MAX);
    }

    #[test]
    fn price_rises_with_smoothed_utilisation() {
        let e = Economics::default();
        assert_eq!(e.price_per_token(0).unwrap(), Amount::from_nano(1_000));
        // u = 1: (1 + 1)² = 4 × base.
        assert_eq!(
            e.price_per_token(1_000_000).unwrap(),
            Amount::from_nano(4_000)
        );
        // EMA 0.8: from 0, a reading of 1.0 moves u to 0.2.
        assert_eq!(e.smooth_utilisation(0, 1_000_000), 200_000);
        assert_eq!(e.smooth_utilisation(200_000, 1_000_000), 360_000);
    }

    #[test]
    fn split_sums_to_the_charge() {
        let e = Economics::default();
        for (charge, n) in [
            (1_000_001i64, 3usize),
            (7, 2),
            (1, 1),
            (123_456_789, 0),
            (0, 4),
        ] {
            let s = e.split(Amount::from_nano(charge), n).unwrap();
            let total = s.burn.nano()
                + s.driver.nano()
                + s.validator.nano()
                + s.processors.iter().map(|a| a.nano()).sum::<i64>();
            assert_eq!(total, charge, "{charge} over {n}");
            assert_eq!(s.processors.len(), n);
        }
        // 1 NEURO: 0.05 burned; of 0.95, 15% / 70% / 15%.
        let s = e.split(Amount::neuro(1), 2).unwrap();
        assert_eq!(s.burn, Amount::from_nano(50_000_000));
        assert_eq!(s.driver, Amount::from_nano(142_500_000));
        assert_eq!(s.validator, Amount::from_nano(142_500_000));
        assert_eq!(s.processors, vec![Amount::from_nano(332_500_000); 2]);
    }

    #[test]
    fn slash_and_fee() {
        let e = Economics::default();
        assert_eq!(
            e.slash(Amount::neuro(100)).unwrap(),
            (Amount::neuro(25), Amount::neuro(25))
        );
        assert_eq!(e.fee(Amount::from_nano(1)).unwrap(), Amount::from_nano(1));
        assert_eq!(
            e.fee(Amount::neuro(1)).unwrap(),
            Amount::from_nano(50_000_000)
        );
    }

    #[test]
    fn bad_economics_are_named() {
        let bad = |f: fn(&mut Economics)| {
            let mut e = Economics::default();
            f(&mut e);
            e.validate().unwrap_err().message
        };
        assert!(bad(|e| e.driver_share_bps = 2_000).contains("share"));
        assert!(bad(|e| e.fee_burn_bps = 10_001).contains("fee_burn_bps"));
        assert!(bad(|e| e.tokens_per_batch = 0).contains("tokens_per_batch"));
        assert!(bad(|e| e.utilisation_ema_ppm = 1_000_000).contains("utilisation_ema_ppm"));
        Economics::default().validate().unwrap();
    }
}
