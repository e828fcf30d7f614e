//! Operations, the JSON log format (`--log-format json`): one object per line, every field
//! typed. tracing-subscriber's own JSON formatter writes a `u128` (a `Duration::as_millis()`)
//! and anything recorded with `?`/`%` as a string, and it can only write arrays through
//! `valuable`, which needs `--cfg tracing_unstable` on every build; this formatter is the small
//! replacement.
//!
//! Receives tracing events and span fields; hands stderr lines shaped like tracing-subscriber's
//! flattened JSON (`timestamp`, `level`, the message and fields, `target`, `spans`). Numbers and
//! booleans stay JSON numbers and booleans (128-bit ones too, when they fit in 64 bits), and a
//! field recorded as a [`List`] (or any `?`/`%` value whose text is a JSON array, as the `Debug`
//! of a list of plain strings is) becomes a JSON array. Every other value is a string.

use std::fmt::{self, Write as _};

use serde_json::Value;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// A list-valued log field: `parts = %List(&names)` logs `["a","b"]` in readable logs and a JSON
/// array of strings (each item's `Display`) in JSON logs.
#[derive(Debug, Clone, Copy)]
pub struct List<'a, T>(pub &'a [T]);

/// The JSON event and span-field formatter (`fmt().event_format(JsonLines).fmt_fields(JsonLines)`).
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonLines;

/// The fields of one event or span, typed, in the order they were recorded.
#[derive(Debug, Default)]
struct Fields(Vec<(&'static str, Value)>);

// === impl List ===

impl<T: fmt::Display> fmt::Display for List<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_char('[')?;
        for (i, item) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_char(',')?;
            }
            // A JSON string, so the text parses back as the array it is.
            write!(f, "{}", Value::String(item.to_string()))?;
        }
        f.write_char(']')
    }
}

// === impl JsonLines ===

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut timestamp = String::new();
        SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
        // A `log` record (rustls) carries its real target and level here, not `log`'s.
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        let mut fields = Fields::default();
        fields.push("timestamp", Value::String(timestamp));
        fields.push("level", Value::String(meta.level().to_string()));
        event.record(&mut fields);
        fields.push("target", Value::String(meta.target().to_owned()));
        if let Some(scope) = ctx.event_scope() {
            let spans: Vec<Value> = scope
                .from_root()
                .map(|span| {
                    let ext = span.extensions();
                    let mut object = ext
                        .get::<FormattedFields<N>>()
                        .and_then(|f| serde_json::from_str::<serde_json::Map<_, _>>(&f.fields).ok())
                        .unwrap_or_default();
                    object.insert("name".into(), Value::String(span.name().to_owned()));
                    Value::Object(object)
                })
                .collect();
            if !spans.is_empty() {
                fields.push("spans", Value::Array(spans));
            }
        }
        fields.write(&mut writer)?;
        writer.write_char('\n')
    }
}

impl<'writer> FormatFields<'writer> for JsonLines {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        let mut typed = Fields::default();
        fields.record(&mut typed);
        typed.write(&mut writer)
    }

    /// `span.record(..)` after the span was created: the object gains or replaces fields.
    fn add_fields(
        &self,
        current: &'writer mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        let mut object: serde_json::Map<String, Value> =
            serde_json::from_str(&current.fields).unwrap_or_default();
        let mut typed = Fields::default();
        fields.record(&mut typed);
        for (name, value) in typed.0 {
            object.insert(name.to_owned(), value);
        }
        current.fields = Value::Object(object).to_string();
        Ok(())
    }
}

// === impl Fields ===

impl Fields {
    fn push(&mut self, name: &'static str, value: Value) {
        // `log.target`, `log.file`, ...: the metadata of a `log` record, already normalized.
        if name.starts_with("log.") {
            return;
        }
        // A field recorded twice (span.record) keeps its last value, once.
        self.0.retain(|(n, _)| *n != name);
        self.0.push((name, value));
    }

    /// One JSON object, keys in recording order.
    fn write(&self, w: &mut impl fmt::Write) -> fmt::Result {
        w.write_char('{')?;
        for (i, (name, value)) in self.0.iter().enumerate() {
            if i > 0 {
                w.write_char(',')?;
            }
            write!(w, "{}:{}", Value::String((*name).to_owned()), value)?;
        }
        w.write_char('}')
    }
}

impl Visit for Fields {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.push(field.name(), Value::from(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.push(field.name(), Value::from(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.push(field.name(), Value::from(value));
    }

    fn record_i128(&mut self, field: &Field, value: i128) {
        let value =
            i64::try_from(value).map_or_else(|_| Value::String(value.to_string()), Value::from);
        self.push(field.name(), value);
    }

    fn record_u128(&mut self, field: &Field, value: u128) {
        let value =
            u64::try_from(value).map_or_else(|_| Value::String(value.to_string()), Value::from);
        self.push(field.name(), value);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.push(field.name(), Value::Bool(value));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.push(field.name(), Value::String(value.to_owned()));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.push(field.name(), Value::String(value.to_string()));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let text = format!("{value:?}");
        if field.name() != "message"
            && text.starts_with('[')
            && let Ok(list @ Value::Array(_)) = serde_json::from_str(&text)
        {
            self.push(field.name(), list);
            return;
        }
        self.push(field.name(), Value::String(text));
    }
}

#[cfg(test)]
mod tests;
