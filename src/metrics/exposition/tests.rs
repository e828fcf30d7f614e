//! Tests of the format negotiation and the OpenMetrics -> Prometheus text rewrite.

use super::*;
use http::HeaderValue;

fn accept(values: &[&str]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for v in values {
        headers.append(ACCEPT, HeaderValue::from_str(v).unwrap());
    }
    headers
}

/// What Prometheus v3 sends by default (`scrape_protocols` unset; `acceptHeader` in its
/// scrape/scrape.go, the escaping parameter added to the 1.0.0 formats).
const PROMETHEUS_V3: &str = "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,\
    application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,\
    text/plain;version=0.0.4;q=0.3,*/*;q=0.2";
/// What Prometheus v2 sends by default.
const PROMETHEUS_V2: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,\
    text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

#[test]
fn prometheus_gets_openmetrics_and_everyone_else_text() {
    use Format::*;
    let cases: &[(&[&str], Format)] = &[
        (&[], Text),
        (&["*/*"], Text),
        (&["text/plain; version=0.0.4"], Text),
        (&["text/plain"], Text),
        (
            &["application/openmetrics-text; version=1.0.0"],
            OpenMetrics,
        ),
        (&["application/openmetrics-text;version=0.0.1"], OpenMetrics),
        (&["Application/OpenMetrics-Text"], OpenMetrics),
        (&[PROMETHEUS_V3], OpenMetrics),
        (&[PROMETHEUS_V2], OpenMetrics),
        // `scrape_protocols: [PrometheusText0.0.4]` and `[PrometheusText1.0.0]`.
        (&["text/plain;version=0.0.4;q=0.6,*/*;q=0.5"], Text),
        (
            &["text/plain;version=1.0.0;escaping=allow-utf-8;q=0.6,*/*;q=0.5"],
            Text,
        ),
        // Quality decides, not position; equal qualities keep the client's order.
        (
            &["text/plain;version=0.0.4;q=0.3,application/openmetrics-text;version=1.0.0;q=0.9"],
            OpenMetrics,
        ),
        (
            &["text/plain;version=0.0.4;q=0.9,application/openmetrics-text;version=1.0.0;q=0.3"],
            Text,
        ),
        (&["text/plain,application/openmetrics-text"], Text),
        // Not acceptable, unknown versions, a browser, several header lines.
        (&["application/openmetrics-text;q=0"], Text),
        (&["application/openmetrics-text; version=2.0.0"], Text),
        (
            &["text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"],
            Text,
        ),
        (
            &["text/html", "application/openmetrics-text; version=1.0.0"],
            OpenMetrics,
        ),
        (&["application/openmetrics-text; q=bogus"], Text),
    ];
    for (headers, want) in cases {
        assert_eq!(Format::negotiate(&accept(headers)), *want, "{headers:?}");
    }
    assert_eq!(
        Format::Text.content_type(),
        "text/plain; version=0.0.4; charset=utf-8"
    );
    assert!(
        Format::OpenMetrics
            .content_type()
            .starts_with("application/openmetrics-text; version=1.0.0")
    );
}

#[test]
fn every_openmetrics_family_type_becomes_its_text_format_counterpart() {
    let om = "\
# HELP calls Calls \\\"quoted\\\", a \\\\ and a\\nnewline.
# TYPE calls counter
calls_total{part=\"a\"} 3
calls_created{part=\"a\"} 1700000000.5
calls_total{part=\"b # not a comment, {}\"} 1 # {trace_id=\"x\"} 1.0 1700000000.25
# HELP build The version.
# TYPE build info
build_info{version=\"1.0\"} 1
# HELP latency_seconds Latency.
# TYPE latency_seconds histogram
# UNIT latency_seconds seconds
latency_seconds_bucket{le=\"0.5\"} 1
latency_seconds_bucket{le=\"+Inf\"} 2
latency_seconds_sum 0.75
latency_seconds_count 2
latency_seconds_created 1700000000
# HELP up Up.
# TYPE up gauge
up 1 1700000000.123
# HELP odd Odd.
# TYPE odd unknown
odd NaN
# HELP state State.
# TYPE state stateset
state{state=\"a\"} 1
# TYPE gh gaugehistogram
gh_bucket{le=\"+Inf\"} 1
gh_gcount 1
gh_gsum 2
# HELP empty Counter without samples.
# TYPE empty counter
# EOF
";
    let want = "\
# HELP calls_total Calls \"quoted\", a \\\\ and a\\nnewline.
# TYPE calls_total counter
calls_total{part=\"a\"} 3
calls_total{part=\"b # not a comment, {}\"} 1
# HELP build_info The version.
# TYPE build_info gauge
build_info{version=\"1.0\"} 1
# HELP latency_seconds Latency.
# TYPE latency_seconds histogram
latency_seconds_bucket{le=\"0.5\"} 1
latency_seconds_bucket{le=\"+Inf\"} 2
latency_seconds_sum 0.75
latency_seconds_count 2
# HELP up Up.
# TYPE up gauge
up 1 1700000000123
# HELP odd Odd.
# TYPE odd untyped
odd NaN
# HELP state State.
# TYPE state gauge
state{state=\"a\"} 1
gh_bucket{le=\"+Inf\"} 1
gh_gcount 1
gh_gsum 2
# HELP empty_total Counter without samples.
# TYPE empty_total counter
";
    assert_eq!(to_text(om), want);
}

#[test]
fn stray_help_lines_and_lone_backslashes_survive() {
    // A HELP whose TYPE never comes, then one for another name; a backslash that OpenMetrics
    // would not have let through unescaped.
    let om = "# HELP a A.\n# HELP b B \\ x.\n# TYPE c gauge\nc 1\n# HELP d D.\n";
    assert_eq!(
        to_text(om),
        "# HELP a A.\n# HELP b B \\\\ x.\n# TYPE c gauge\nc 1\n# HELP d D.\n"
    );
}

#[test]
fn the_gateways_registry_converts_without_openmetrics_leftovers() {
    let metrics = crate::metrics::Metrics::new();
    let part = metrics.part("p");
    part.record(
        crate::metrics::MethodId::OTHER,
        tonic::Code::Ok,
        std::time::Instant::now(),
    );
    let om = metrics.encode_as(Format::OpenMetrics);
    // One encoding for both: the process series move between two scrapes.
    let text = to_text(&om);
    assert!(
        metrics
            .encode_as(Format::Text)
            .contains("# TYPE partgate_build_info gauge\n")
    );
    assert!(om.ends_with("# EOF\n") && om.contains("# TYPE partgate_build info"));
    assert!(!text.contains("# EOF") && !text.contains(" info\n") && !text.contains("# UNIT"));
    assert!(
        text.contains("# TYPE partgate_build_info gauge\n"),
        "{text}"
    );
    assert!(
        text.contains("# TYPE partgate_calls_started_total counter\n"),
        "{text}"
    );
    assert!(
        text.contains("# TYPE partgate_call_duration_seconds histogram\n"),
        "{text}"
    );
    // Every sample of the OpenMetrics text is in the text format, unchanged.
    let samples = |s: &str| -> Vec<String> {
        s.lines()
            .filter(|l| !l.starts_with('#'))
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(samples(&om), samples(&text));
}
