//! HorizontalPodAutoscaler, served as `autoscaling/v2` and `autoscaling/v1` over one storage
//! (`v2`): `kubectl get hpa` columns read either shape.

use serde_json::{Value, json};

use crate::strategy::Strategy;
use crate::table::{AGE, Column, NAME, age_of, col, n, s};

/// The HorizontalPodAutoscaler strategy (both versions).
#[derive(Debug)]
pub struct HorizontalPodAutoscalers;

/// The Targets cell: each metric's current value against its target, as kubectl shows it.
fn targets(obj: &Value) -> String {
    if let Some(target) =
        obj.pointer("/spec/targetCPUUtilizationPercentage").and_then(Value::as_i64)
    {
        let current = obj
            .pointer("/status/currentCPUUtilizationPercentage")
            .and_then(Value::as_i64)
            .map_or_else(|| "<unknown>".to_owned(), |c| format!("{c}%"));
        return format!("cpu: {current}/{target}%");
    }
    let metrics =
        obj.pointer("/spec/metrics").and_then(Value::as_array).cloned().unwrap_or_default();
    if metrics.is_empty() {
        return "<none>".to_owned();
    }
    let statuses = obj.pointer("/status/currentMetrics").and_then(Value::as_array);
    let shown: Vec<String> = metrics
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let current = statuses.and_then(|st| st.get(i));
            match s(m, "/type") {
                kind @ ("Resource" | "ContainerResource") => {
                    let key = if kind == "Resource" { "resource" } else { "containerResource" };
                    let name = s(m, &format!("/{key}/name"));
                    let target =
                        m.pointer(&format!("/{key}/target")).cloned().unwrap_or(Value::Null);
                    let now = current.and_then(|c| c.get(key)).and_then(|c| c.get("current"));
                    if let Some(avg) = target.get("averageValue").and_then(Value::as_str) {
                        let cur = now
                            .and_then(|c| c.get("averageValue"))
                            .and_then(Value::as_str)
                            .unwrap_or("<unknown>");
                        format!("{name}: {cur}/{avg}")
                    } else {
                        let cur = now
                            .and_then(|c| c.get("averageUtilization"))
                            .and_then(Value::as_i64)
                            .map_or_else(|| "<unknown>".to_owned(), |c| format!("{c}%"));
                        let goal = target
                            .get("averageUtilization")
                            .and_then(Value::as_i64)
                            .map_or_else(|| "<auto>".to_owned(), |t| format!("{t}%"));
                        format!("{name}: {cur}/{goal}")
                    }
                }
                "Pods" => format!(
                    "{}/{}",
                    current.map_or("<unknown>", |c| s(c, "/pods/current/averageValue")),
                    s(m, "/pods/target/averageValue")
                ),
                _ => "<unknown type>".to_owned(),
            }
        })
        .collect();
    if shown.len() > 2 {
        format!("{} + {} more...", shown[..2].join(", "), shown.len() - 2)
    } else {
        shown.join(", ")
    }
}

impl Strategy for HorizontalPodAutoscalers {
    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            col("Reference", "string", 0),
            col("Targets", "string", 0),
            col("MinPods", "string", 0),
            col("MaxPods", "string", 0),
            col("Replicas", "string", 0),
            AGE,
        ]
    }

    fn cells(&self, obj: &Value, now: i64) -> Vec<Value> {
        let min = obj
            .pointer("/spec/minReplicas")
            .and_then(Value::as_i64)
            .map_or_else(|| "<unset>".to_owned(), |m| m.to_string());
        vec![
            json!(s(obj, "/metadata/name")),
            json!(format!(
                "{}/{}",
                s(obj, "/spec/scaleTargetRef/kind"),
                s(obj, "/spec/scaleTargetRef/name")
            )),
            json!(targets(obj)),
            json!(min),
            json!(n(obj, "/spec/maxReplicas")),
            json!(n(obj, "/status/currentReplicas")),
            json!(age_of(obj, "/metadata/creationTimestamp", now)),
        ]
    }
}
