//! Metrics, the two exposition formats of `GET /metrics`: OpenMetrics for scrapers that ask for
//! it (Prometheus does), the Prometheus text format 0.0.4 for everything else (curl, browsers,
//! `promtool check metrics`, older agents), chosen from the `Accept` header the way Prometheus'
//! own client libraries choose (client_golang's `expfmt.NegotiateIncludingOpenMetrics`).
//!
//! Receives the registry's OpenMetrics text (prometheus-client encodes nothing else) and the
//! request's headers; hands back the body and its content type. The text format is the
//! OpenMetrics text rewritten line by line in one pass (no parse into a model, so a scrape stays
//! one string copy): info families become gauges named `<name>_info`, counter families take
//! their samples' `_total` name, `_created` samples, `# UNIT` lines, exemplars and `# EOF` go,
//! unknown becomes untyped, and sample timestamps turn from seconds to milliseconds.

use http::HeaderMap;
use http::header::ACCEPT;

/// Content type of the OpenMetrics exposition.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Content type of the Prometheus text exposition.
pub const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The exposition format a scrape gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0 text.
    OpenMetrics,
    /// Prometheus text format 0.0.4.
    Text,
}

/// The type of the family whose samples follow, as far as the rewrite cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Samples keep their names; `_created` samples go.
    Counter,
    /// Histograms and summaries: `_created` samples go too.
    WithCreated,
    /// Everything else: samples pass as they are.
    Plain,
}

// === impl Format ===

impl Format {
    /// The format for a request with these headers: the first media range, by quality, that
    /// names OpenMetrics (version 1.0.0, 0.0.1 or none) or the text format (0.0.4 or no version);
    /// the text format if none does (no `Accept`, `*/*`, a browser's list).
    pub fn negotiate(headers: &HeaderMap) -> Self {
        let mut ranges: Vec<(f32, usize, &str)> = headers
            .get_all(ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .enumerate()
            .filter_map(|(i, range)| Some((quality(range)?, i, range)))
            .collect();
        // Highest quality first; equal qualities keep the client's order.
        ranges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        for (_, _, range) in ranges {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or("").trim();
            let version = parts
                .filter_map(|p| p.split_once('='))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("version"))
                .map_or("", |(_, v)| v.trim().trim_matches('"'));
            if media.eq_ignore_ascii_case("application/openmetrics-text")
                && matches!(version, "" | "1.0.0" | "0.0.1")
            {
                return Self::OpenMetrics;
            }
            if media.eq_ignore_ascii_case("text/plain") && matches!(version, "" | "0.0.4") {
                return Self::Text;
            }
        }
        Self::Text
    }

    /// The `Content-Type` of this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::OpenMetrics => OPENMETRICS,
            Self::Text => TEXT,
        }
    }
}

/// A media range's `q` (1 when absent); `None` for `q=0` (not acceptable) or an unreadable one.
fn quality(range: &str) -> Option<f32> {
    let q = range
        .split(';')
        .skip(1)
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
        .map_or(Ok(1.0), |(_, v)| v.trim().parse::<f32>());
    q.ok().filter(|q| *q > 0.0)
}

/// Rewrites an OpenMetrics exposition into the Prometheus text format 0.0.4.
pub fn to_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    // prometheus-client writes HELP before TYPE; the HELP line waits for the TYPE line, which
    // decides the name both carry in the text format.
    let mut help: Option<(&str, &str)> = None;
    let mut family: (&str, Kind) = ("", Kind::Plain);
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            flush_help(&mut out, help.take(), None);
            help = Some(rest.split_once(' ').unwrap_or((rest, "")));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            let (suffix, text_kind, rewrite) = match kind.trim() {
                "counter" => ("_total", Some("counter"), Kind::Counter),
                "info" => ("_info", Some("gauge"), Kind::Plain),
                "gauge" | "stateset" => ("", Some("gauge"), Kind::Plain),
                "histogram" => ("", Some("histogram"), Kind::WithCreated),
                "summary" => ("", Some("summary"), Kind::WithCreated),
                "unknown" => ("", Some("untyped"), Kind::Plain),
                // A gauge histogram's `_gcount`/`_gsum` have no text-format type: its samples
                // stay, untyped.
                _ => ("", None, Kind::Plain),
            };
            let (own_help, other_help) = match help.take() {
                Some(h) if h.0 == name => (Some(h), None),
                h => (None, h),
            };
            flush_help(&mut out, other_help, None);
            if let Some(text_kind) = text_kind {
                flush_help(&mut out, own_help, Some(suffix));
                push_all(&mut out, &["# TYPE ", name, suffix, " ", text_kind, "\n"]);
            }
            family = (name, rewrite);
            continue;
        }
        flush_help(&mut out, help.take(), None);
        if line.starts_with("# UNIT ") || line == "# EOF" || line.is_empty() {
            continue;
        }
        if line.starts_with('#') {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        sample(&mut out, line, family);
    }
    flush_help(&mut out, help, None);
    out
}

/// Writes a pending HELP line under the family's text-format name (`suffix` added), its
/// escapes those of the text format: OpenMetrics also escapes `"`, which the text format
/// does not, and a lone backslash becomes an escaped one.
fn flush_help(out: &mut String, help: Option<(&str, &str)>, suffix: Option<&str>) {
    let Some((name, text)) = help else { return };
    push_all(out, &["# HELP ", name, suffix.unwrap_or(""), " "]);
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.clone().next() {
                Some('\\') => {
                    chars.next();
                    out.push_str("\\\\");
                }
                Some('n') => {
                    chars.next();
                    out.push_str("\\n");
                }
                Some('"') => {
                    chars.next();
                    out.push('"');
                }
                _ => out.push_str("\\\\"),
            },
            c => out.push(c),
        }
    }
    out.push('\n');
}

/// Writes one sample line: without `_created` samples and exemplars, timestamps in ms.
fn sample(out: &mut String, line: &str, (family, kind): (&str, Kind)) {
    let series_end = series_end(line);
    let (series, rest) = line.split_at(series_end);
    let name = series.split('{').next().unwrap_or(series);
    if kind != Kind::Plain
        && name
            .strip_prefix(family)
            .is_some_and(|suffix| suffix == "_created")
    {
        return;
    }
    // After the series: " value [timestamp] [# exemplar]".
    let rest = rest.split(" # ").next().unwrap_or(rest);
    let mut fields = rest.split_whitespace();
    let value = fields.next().unwrap_or("");
    out.push_str(series);
    out.push(' ');
    out.push_str(value);
    if let Some(ms) = fields
        .next()
        .and_then(|t| t.parse::<f64>().ok())
        .map(|seconds| (seconds * 1000.0).round() as i64)
    {
        out.push(' ');
        out.push_str(&ms.to_string());
    }
    out.push('\n');
}

/// Where the series (name and labels) of a sample line ends: at the first space outside the
/// label set, whose quoted values may hold spaces, `}` and `#`.
fn series_end(line: &str) -> usize {
    let mut in_labels = false;
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, b) in line.bytes().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' if in_quotes => escaped = true,
            b'"' if in_labels => in_quotes = !in_quotes,
            b'{' if !in_quotes => in_labels = true,
            b'}' if !in_quotes => in_labels = false,
            b' ' if !in_labels => return i,
            _ => {}
        }
    }
    line.len()
}

fn push_all(out: &mut String, parts: &[&str]) {
    for p in parts {
        out.push_str(p);
    }
}

#[cfg(test)]
mod tests;
