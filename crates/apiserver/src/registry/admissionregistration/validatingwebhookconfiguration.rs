//! ValidatingWebhookConfiguration: the webhooks the API server is to call.

use serde_json::Value;

use crate::strategy::Strategy;
use crate::table::Column;

/// The ValidatingWebhookConfiguration strategy.
#[derive(Debug)]
pub struct ValidatingWebhookConfigurations;

impl Strategy for ValidatingWebhookConfigurations {
    fn columns(&self) -> Vec<Column> {
        super::webhook_columns()
    }

    fn cells(&self, obj: &Value, now: i64) -> Vec<Value> {
        super::webhook_cells(obj, now)
    }
}
