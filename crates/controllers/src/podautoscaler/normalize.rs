//! Pure: from the replicas the metrics ask for to the replicas set, as upstream's HPA does.
//! Recommendations are stabilised (a scale-down takes the highest recommendation of the
//! scale-down window, a scale-up the lowest of the scale-up window), then held to the rate
//! the scaling policies allow over their periods (given the scale events of those periods)
//! and to `minReplicas`/`maxReplicas`. Without `behavior` the older rules apply: the
//! controller's downscale stabilisation window and a scale-up to at most twice the current
//! count (at least 4).
//!
//! The history (recent recommendations and scale events) is the controller's memory, as
//! upstream keeps it: a restart starts it afresh.

use k8s_openapi::api::autoscaling::v2::{
    HPAScalingPolicy, HPAScalingRules, HorizontalPodAutoscalerBehavior,
};

/// A recommendation and when it was made (seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Recommendation {
    replicas: i32,
    at: i64,
}

/// A change of the target's replicas and when it was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ScaleEvent {
    change: i32,
    at: i64,
}

/// One HPA's recent recommendations and scale events.
#[derive(Debug, Clone, Default)]
pub struct History {
    recommendations: Vec<Recommendation>,
    up: Vec<ScaleEvent>,
    down: Vec<ScaleEvent>,
}

/// The outcome, with the conditions it sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Normalized {
    /// Replicas to set.
    pub replicas: i32,
    /// `AbleToScale` (True): reason and message.
    pub able: (&'static str, &'static str),
    /// `ScalingLimited`: whether, reason and message.
    pub limited: (bool, &'static str, &'static str),
}

const READY: (&str, &str) = ("ReadyForNewScale", "recommended size matches current size");
const UP_STABILIZED: (&str, &str) = (
    "ScaleUpStabilized",
    "recent recommendations were lower than current one, applying the lowest recent recommendation",
);
const DOWN_STABILIZED: (&str, &str) = (
    "ScaleDownStabilized",
    "recent recommendations were higher than current one, applying the highest recent recommendation",
);
const WITHIN: (&str, &str) =
    ("DesiredWithinRange", "the desired count is within the acceptable range");
const UP_LIMIT: (&str, &str) =
    ("ScaleUpLimit", "the desired replica count is increasing faster than the maximum scale rate");
const DOWN_LIMIT: (&str, &str) = (
    "ScaleDownLimit",
    "the desired replica count is decreasing faster than the maximum scale rate",
);
const TOO_MANY: (&str, &str) =
    ("TooManyReplicas", "the desired replica count is more than the maximum replica count");
const TOO_FEW: (&str, &str) =
    ("TooFewReplicas", "the desired replica count is less than the minimum replica count");

/// Upstream's default scale-up rules: the larger of 4 pods or 100% per 15 s, at once.
pub fn default_scale_up() -> HPAScalingRules {
    HPAScalingRules {
        stabilization_window_seconds: Some(0),
        select_policy: Some("Max".into()),
        policies: Some(vec![
            HPAScalingPolicy { type_: "Pods".into(), value: 4, period_seconds: 15 },
            HPAScalingPolicy { type_: "Percent".into(), value: 100, period_seconds: 15 },
        ]),
        ..Default::default()
    }
}

/// Upstream's default scale-down rules: 100% per 15 s, after the controller's window.
pub fn default_scale_down() -> HPAScalingRules {
    HPAScalingRules {
        stabilization_window_seconds: None,
        select_policy: Some("Max".into()),
        policies: Some(vec![HPAScalingPolicy {
            type_: "Percent".into(),
            value: 100,
            period_seconds: 15,
        }]),
        ..Default::default()
    }
}

/// `rules` with upstream's defaults where a field is left out.
fn completed(rules: Option<&HPAScalingRules>, default: HPAScalingRules) -> HPAScalingRules {
    let Some(rules) = rules else { return default };
    HPAScalingRules {
        stabilization_window_seconds: rules
            .stabilization_window_seconds
            .or(default.stabilization_window_seconds),
        select_policy: rules.select_policy.clone().or(default.select_policy),
        policies: match &rules.policies {
            Some(p) if !p.is_empty() => Some(p.clone()),
            _ => default.policies,
        },
        tolerance: rules.tolerance.clone(),
    }
}

fn changed_within(events: &[ScaleEvent], period: i32, now: i64) -> i32 {
    events.iter().filter(|e| e.at > now - i64::from(period)).map(|e| e.change).sum()
}

fn scale_up_limit(current: i32, history: &History, rules: &HPAScalingRules, now: i64) -> i32 {
    let select = rules.select_policy.as_deref().unwrap_or("Max");
    if select == "Disabled" {
        return current;
    }
    let mut result = if select == "Min" { i32::MAX } else { i32::MIN };
    for policy in rules.policies.iter().flatten() {
        let added = changed_within(&history.up, policy.period_seconds, now);
        let removed = changed_within(&history.down, policy.period_seconds, now);
        let start = current - added + removed;
        let proposed = if policy.type_ == "Pods" {
            start.saturating_add(policy.value)
        } else {
            (f64::from(start) * (1.0 + f64::from(policy.value) / 100.0)).ceil() as i32
        };
        result = if select == "Min" { result.min(proposed) } else { result.max(proposed) };
    }
    result
}

fn scale_down_limit(current: i32, history: &History, rules: &HPAScalingRules, now: i64) -> i32 {
    let select = rules.select_policy.as_deref().unwrap_or("Max");
    if select == "Disabled" {
        return current;
    }
    // "Max" is the policy allowing the most change: the lowest count.
    let mut result = if select == "Min" { i32::MIN } else { i32::MAX };
    for policy in rules.policies.iter().flatten() {
        let added = changed_within(&history.up, policy.period_seconds, now);
        let removed = changed_within(&history.down, policy.period_seconds, now);
        let start = current + removed - added;
        let proposed = if policy.type_ == "Pods" {
            start - policy.value
        } else {
            (f64::from(start) * (1.0 - f64::from(policy.value) / 100.0)) as i32
        };
        result = if select == "Min" { result.max(proposed) } else { result.min(proposed) };
    }
    result
}

/// Records `proposed` among the recommendations, replacing one older than `keep` seconds.
fn remember(history: &mut History, proposed: i32, now: i64, keep: i64) {
    let fresh = Recommendation { replicas: proposed, at: now };
    match history.recommendations.iter_mut().find(|r| r.at < now - keep) {
        Some(old) => *old = fresh,
        None => history.recommendations.push(fresh),
    }
}

/// The replicas to set, given the current count, the metrics' proposal and the limits.
#[allow(clippy::too_many_arguments)]
pub fn normalize(
    history: &mut History,
    behavior: Option<&HorizontalPodAutoscalerBehavior>,
    current: i32,
    proposed: i32,
    min: i32,
    max: i32,
    downscale_window: i64,
    now: i64,
) -> Normalized {
    let Some(behavior) = behavior else {
        return normalize_legacy(history, current, proposed, min, max, downscale_window, now);
    };
    let up = completed(behavior.scale_up.as_ref(), default_scale_up());
    let down = completed(behavior.scale_down.as_ref(), default_scale_down());
    let up_window = i64::from(up.stabilization_window_seconds.unwrap_or(0));
    let down_window = down.stabilization_window_seconds.map_or(downscale_window, i64::from);
    let (mut up_rec, mut down_rec) = (proposed, proposed);
    for r in &history.recommendations {
        if r.at > now - up_window {
            up_rec = up_rec.min(r.replicas);
        }
        if r.at > now - down_window {
            down_rec = down_rec.max(r.replicas);
        }
    }
    remember(history, proposed, now, up_window.max(down_window));
    let mut stabilized = current;
    if stabilized < up_rec {
        stabilized = up_rec;
    }
    if stabilized > down_rec {
        stabilized = down_rec;
    }
    let able = if stabilized == proposed {
        READY
    } else if proposed >= current {
        UP_STABILIZED
    } else {
        DOWN_STABILIZED
    };
    let (replicas, reason) = if stabilized > current {
        let limit = scale_up_limit(current, history, &up, now).max(current);
        let (allowed, why) = if max > limit { (limit, UP_LIMIT) } else { (max, TOO_MANY) };
        if stabilized > allowed { (allowed, why) } else { (stabilized, WITHIN) }
    } else if stabilized < current {
        let limit = scale_down_limit(current, history, &down, now).min(current);
        let (allowed, why) = if min < limit { (limit, DOWN_LIMIT) } else { (min, TOO_FEW) };
        if stabilized < allowed { (allowed, why) } else { (stabilized, WITHIN) }
    } else {
        (stabilized, WITHIN)
    };
    Normalized { replicas, able, limited: (replicas != stabilized, reason.0, reason.1) }
}

fn normalize_legacy(
    history: &mut History,
    current: i32,
    proposed: i32,
    min: i32,
    max: i32,
    downscale_window: i64,
    now: i64,
) -> Normalized {
    let mut stabilized = proposed;
    for r in &history.recommendations {
        if r.at >= now - downscale_window {
            stabilized = stabilized.max(r.replicas);
        }
    }
    remember(history, proposed, now, downscale_window);
    let able = if stabilized == proposed { READY } else { DOWN_STABILIZED };
    let up_limit = (2 * current).max(4);
    let (allowed, why) = if max > up_limit { (up_limit, UP_LIMIT) } else { (max, TOO_MANY) };
    let (replicas, reason) = if stabilized < min {
        (min, TOO_FEW)
    } else if stabilized > allowed {
        (allowed, why)
    } else {
        (stabilized, WITHIN)
    };
    Normalized { replicas, able, limited: (replicas != stabilized, reason.0, reason.1) }
}

/// Records a change of the target from `old` to `new` replicas, forgetting events older
/// than the longest policy period.
pub fn record_scale(
    history: &mut History,
    behavior: Option<&HorizontalPodAutoscalerBehavior>,
    old: i32,
    new: i32,
    now: i64,
) {
    let Some(behavior) = behavior else { return };
    let longest = |rules: HPAScalingRules| {
        rules.policies.iter().flatten().map(|p| i64::from(p.period_seconds)).max().unwrap_or(0)
    };
    let up_keep = longest(completed(behavior.scale_up.as_ref(), default_scale_up()));
    let down_keep = longest(completed(behavior.scale_down.as_ref(), default_scale_down()));
    history.up.retain(|e| e.at > now - up_keep);
    history.down.retain(|e| e.at > now - down_keep);
    if new > old {
        history.up.push(ScaleEvent { change: new - old, at: now });
    } else if new < old {
        history.down.push(ScaleEvent { change: old - new, at: now });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn behavior(down_window: i32) -> HorizontalPodAutoscalerBehavior {
        HorizontalPodAutoscalerBehavior {
            scale_down: Some(HPAScalingRules {
                stabilization_window_seconds: Some(down_window),
                ..Default::default()
            }),
            scale_up: None,
        }
    }

    #[test]
    fn a_scale_down_waits_for_the_window_to_pass() {
        let mut h = History::default();
        let b = behavior(60);
        // t=0: metrics ask for 4 (from 1): the default scale-up allows max(1+4, 2×1) = 5.
        let n = normalize(&mut h, Some(&b), 1, 4, 1, 10, 300, 0);
        assert_eq!(n.replicas, 4);
        assert_eq!(n.limited, (false, "DesiredWithinRange", WITHIN.1));
        record_scale(&mut h, Some(&b), 1, 4, 0);
        // t=15: the load is gone, 1 is asked for; 4 is still within the 60 s window.
        let n = normalize(&mut h, Some(&b), 4, 1, 1, 10, 300, 15);
        assert_eq!((n.replicas, n.able.0), (4, "ScaleDownStabilized"));
        // t=61: the window has passed.
        let n = normalize(&mut h, Some(&b), 4, 1, 1, 10, 300, 61);
        assert_eq!(n.replicas, 1);
    }

    #[test]
    fn scale_up_is_held_to_the_policies_rate_and_max() {
        let mut h = History::default();
        let b = behavior(0);
        // From 2, asking 20: max(2 + 4, 2 × 2) = 6 in the first 15 s.
        let n = normalize(&mut h, Some(&b), 2, 20, 1, 50, 300, 0);
        assert_eq!(n.replicas, 6);
        assert_eq!(n.limited, (true, "ScaleUpLimit", UP_LIMIT.1));
        record_scale(&mut h, Some(&b), 2, 6, 0);
        // 5 s later the period still started at 2: nothing more.
        let n = normalize(&mut h, Some(&b), 6, 20, 1, 50, 300, 5);
        assert_eq!(n.replicas, 6);
        // Past the period: from 6, max(10, 12) = 12.
        let n = normalize(&mut h, Some(&b), 6, 20, 1, 50, 300, 20);
        assert_eq!(n.replicas, 12);
        // The maximum is its own limit.
        let n = normalize(&mut History::default(), Some(&b), 2, 20, 1, 3, 300, 0);
        assert_eq!(n.replicas, 3);
        assert_eq!(n.limited, (true, "TooManyReplicas", TOO_MANY.1));
    }

    #[test]
    fn disabled_and_pods_policies_limit_scale_down() {
        let mut h = History::default();
        let b = HorizontalPodAutoscalerBehavior {
            scale_down: Some(HPAScalingRules {
                stabilization_window_seconds: Some(0),
                policies: Some(vec![HPAScalingPolicy {
                    type_: "Pods".into(),
                    value: 1,
                    period_seconds: 60,
                }]),
                select_policy: None,
                tolerance: None,
            }),
            scale_up: Some(HPAScalingRules {
                select_policy: Some("Disabled".into()),
                ..Default::default()
            }),
        };
        let n = normalize(&mut h, Some(&b), 5, 1, 1, 10, 300, 0);
        assert_eq!((n.replicas, n.limited.1), (4, "ScaleDownLimit"));
        record_scale(&mut h, Some(&b), 5, 4, 0);
        assert_eq!(normalize(&mut h, Some(&b), 4, 1, 1, 10, 300, 30).replicas, 4);
        assert_eq!(
            normalize(&mut h, Some(&b), 4, 9, 1, 10, 300, 30).replicas,
            4,
            "scale-up disabled"
        );
        assert_eq!(normalize(&mut h, Some(&b), 4, 1, 1, 10, 300, 61).replicas, 3);
    }

    #[test]
    fn without_behavior_the_older_rules_apply() {
        let mut h = History::default();
        // Scale-up to at most max(2 × 1, 4) = 4.
        let n = normalize(&mut History::default(), None, 1, 10, 1, 20, 300, 0);
        assert_eq!((n.replicas, n.limited.1), (4, "ScaleUpLimit"));
        let n = normalize(&mut h, None, 1, 3, 1, 20, 300, 0);
        assert_eq!((n.replicas, n.limited.1), (3, "DesiredWithinRange"));
        // Within 300 s of a recommendation of 3, nothing goes below it.
        let n = normalize(&mut h, None, 3, 1, 1, 20, 300, 100);
        assert_eq!((n.replicas, n.able.0), (3, "ScaleDownStabilized"));
        let n = normalize(&mut h, None, 3, 1, 1, 20, 300, 301);
        assert_eq!((n.replicas, n.able.0), (1, "ReadyForNewScale"));
        // Below the minimum.
        let n = normalize(&mut History::default(), None, 3, 1, 2, 20, 300, 0);
        assert_eq!((n.replicas, n.limited.1), (2, "TooFewReplicas"));
    }
}
