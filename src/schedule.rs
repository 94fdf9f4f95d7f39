//! Learning-rate schedules as `transformers` defines them (`get_linear_schedule_with_warmup`,
//! `get_cosine_schedule_with_warmup`): a factor of the base learning rate for each optimizer
//! step, linear warm-up from 0, then a linear or half-cosine decay to 0 at the run's last step.

use serde::{Deserialize, Serialize};

use crate::PeapodError;

/// The shape of the learning rate over a run. The paper's config (POD's `pretrain.py`) keeps it
/// constant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    #[default]
    Constant,
    Linear,
    Cosine,
}

/// A learning-rate schedule over `total_steps` optimizer steps (or, when None, over the run's
/// step budget — `max_steps`, else epochs × batches per epoch — fixed when the run starts and
/// kept in its checkpoints, so that a resumed run follows the schedule it started with).
///
/// ```
/// use peapod::schedule::{LrSchedule, ScheduleKind};
/// let s = LrSchedule { kind: ScheduleKind::Linear, warmup_steps: 10, total_steps: None };
/// // transformers applies factor(k) at the (k+1)-th optimizer step: warm-up starts at 0.
/// assert_eq!(s.factor(0, 110), 0.0);
/// assert_eq!(s.factor(5, 110), 0.5);
/// assert_eq!(s.factor(60, 110), 0.5);
/// assert_eq!(s.factor(110, 110), 0.0);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LrSchedule {
    pub kind: ScheduleKind,
    /// Steps of linear warm-up from 0 (ignored by the constant schedule).
    pub warmup_steps: u64,
    /// The step at which the decay reaches 0; None: the run's step budget.
    pub total_steps: Option<u64>,
}

impl LrSchedule {
    /// The schedule named `name` (constant, linear or cosine) with `warmup_steps` of warm-up.
    pub fn parse(
        name: &str,
        warmup_steps: u64,
        total_steps: Option<u64>,
    ) -> Result<Self, PeapodError> {
        let kind = match name.trim() {
            "constant" => ScheduleKind::Constant,
            "linear" => ScheduleKind::Linear,
            "cosine" => ScheduleKind::Cosine,
            other => {
                return Err(PeapodError::Config(format!(
                    "unknown learning-rate schedule `{other}` (constant, linear or cosine)"
                )))
            }
        };
        let schedule = LrSchedule {
            kind,
            warmup_steps,
            total_steps,
        };
        schedule.validate()?;
        Ok(schedule)
    }

    /// A warm-up as long as the decay, or a decay over no steps, is refused.
    pub fn validate(&self) -> Result<(), PeapodError> {
        if self.kind == ScheduleKind::Constant {
            return Ok(());
        }
        match self.total_steps {
            Some(0) => Err(PeapodError::Config(
                "the learning-rate schedule's total_steps must be at least 1".into(),
            )),
            Some(total) if self.warmup_steps >= total => Err(PeapodError::Config(format!(
                "the learning-rate warm-up ({} steps) must be shorter than the schedule ({total} steps)",
                self.warmup_steps
            ))),
            _ => Ok(()),
        }
    }

    /// The factor of the base learning rate for the optimizer step that follows `step` steps
    /// already taken, in a schedule of `total` steps (transformers' `lr_lambda(step)`).
    pub fn factor(&self, step: u64, total: u64) -> f64 {
        if self.kind == ScheduleKind::Constant {
            return 1.0;
        }
        let (step, warmup, total) = (step as f64, self.warmup_steps as f64, total as f64);
        if step < warmup {
            return step / warmup.max(1.0);
        }
        let progress = (step - warmup) / (total - warmup).max(1.0);
        match self.kind {
            ScheduleKind::Linear => ((total - step) / (total - warmup).max(1.0)).max(0.0),
            // transformers' default half cycle: 0.5 · (1 + cos(π · progress)).
            _ => (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0),
        }
    }

    /// What the run's bar and logs say of it.
    pub fn describe(&self) -> String {
        match self.kind {
            ScheduleKind::Constant => "constant".into(),
            ScheduleKind::Linear => format!("linear (warm-up {} steps)", self.warmup_steps),
            ScheduleKind::Cosine => format!("cosine (warm-up {} steps)", self.warmup_steps),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(kind: ScheduleKind, warmup_steps: u64) -> LrSchedule {
        LrSchedule {
            kind,
            warmup_steps,
            total_steps: None,
        }
    }

    /// The values transformers' lambdas give (written out from their definitions).
    #[test]
    fn factors_follow_transformers_definitions() {
        let linear = schedule(ScheduleKind::Linear, 4);
        let expected = [0.0, 0.25, 0.5, 0.75, 1.0, 0.9, 0.8, 0.7];
        for (step, want) in expected.iter().enumerate() {
            let got = linear.factor(step as u64, 14);
            assert!((got - want).abs() < 1e-12, "linear {step}: {got} vs {want}");
        }
        assert_eq!(linear.factor(14, 14), 0.0);
        assert_eq!(linear.factor(20, 14), 0.0, "past the end it stays at 0");

        let cosine = schedule(ScheduleKind::Cosine, 2);
        // total 10, warm-up 2: progress (k - 2) / 8.
        let pi = std::f64::consts::PI;
        for (step, want) in [
            (0, 0.0),
            (1, 0.5),
            (2, 1.0),
            (4, 0.5 * (1.0 + (pi / 4.0).cos())),
            (6, 0.5),
            (10, 0.0),
        ] {
            let got = cosine.factor(step, 10);
            assert!((got - want).abs() < 1e-12, "cosine {step}: {got} vs {want}");
        }
        // Without warm-up the first step runs at the full rate.
        assert_eq!(schedule(ScheduleKind::Cosine, 0).factor(0, 10), 1.0);
        assert_eq!(schedule(ScheduleKind::Linear, 0).factor(0, 10), 1.0);
        let constant = schedule(ScheduleKind::Constant, 5);
        assert!((0..20).all(|k| constant.factor(k, 10) == 1.0));
    }

    #[test]
    fn names_and_bad_settings_are_checked() {
        let s = LrSchedule::parse("cosine", 3, Some(10)).unwrap();
        assert_eq!(
            (s.kind, s.warmup_steps, s.total_steps),
            (ScheduleKind::Cosine, 3, Some(10))
        );
        let err = LrSchedule::parse("step", 0, None).unwrap_err().to_string();
        assert!(
            err.contains("unknown learning-rate schedule `step`"),
            "{err}"
        );
        let err = LrSchedule::parse("linear", 10, Some(10))
            .unwrap_err()
            .to_string();
        assert!(err.contains("warm-up (10 steps) must be shorter"), "{err}");
        assert!(LrSchedule::parse("constant", 10, Some(10)).is_ok());
    }
}
