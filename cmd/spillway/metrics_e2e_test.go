package main

import (
	"bytes"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/spillwayhq/spillway/internal/testkit"
	"github.com/spillwayhq/spillway/spool"
)

// scrape is one read of /metrics.
type scrape map[string]*dto.MetricFamily

func scrapeMetrics(t testing.TB, base string) scrape {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %s", resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	return fams
}

// value is the sample of name whose labels are exactly kv (name, value
// pairs); for a histogram, its count. ok is false if there is none.
func (s scrape) value(name string, kv ...string) (v float64, ok bool) {
	f := s[name]
	if f == nil {
		return 0, false
	}
	want := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		want[kv[i]] = kv[i+1]
	}
	for _, m := range f.GetMetric() {
		got := map[string]string{}
		for _, l := range m.GetLabel() {
			got[l.GetName()] = l.GetValue()
		}
		if !maps.Equal(got, want) {
			continue
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount()), true
		case m.Untyped != nil:
			return m.Untyped.GetValue(), true
		}
	}
	return 0, false
}

func (s scrape) must(t testing.TB, name string, kv ...string) float64 {
	t.Helper()
	v, ok := s.value(name, kv...)
	if !ok {
		t.Fatalf("no sample %s%v", name, kv)
	}
	return v
}

// labelNames are the label names every sample of name carries, sorted.
func (s scrape) labelNames(name string) []string {
	seen := map[string]bool{}
	for _, m := range s[name].GetMetric() {
		for _, l := range m.GetLabel() {
			seen[l.GetName()] = true
		}
	}
	return slices.Sorted(maps.Keys(seen))
}

// designSeries are DESIGN.md's Observability series: name, type, labels.
var designSeries = []struct {
	name   string
	typ    dto.MetricType
	labels []string
}{
	{"spillway_events_received_total", dto.MetricType_COUNTER, []string{"endpoint"}},
	{"spillway_events_rejected_total", dto.MetricType_COUNTER, []string{"reason"}},
	{"spillway_request_duration_seconds", dto.MetricType_HISTOGRAM, []string{"endpoint"}},
	{"spillway_fsync_duration_seconds", dto.MetricType_HISTOGRAM, nil},
	{"spillway_spool_bytes", dto.MetricType_GAUGE, nil},
	{"spillway_spool_blocks", dto.MetricType_GAUGE, nil},
	{"spillway_events_delivered_total", dto.MetricType_COUNTER, []string{"destination"}},
	{"spillway_events_dead_lettered_total", dto.MetricType_COUNTER, []string{"destination", "reason"}},
	{"spillway_forward_retries_total", dto.MetricType_COUNTER, []string{"destination", "reason"}},
	{"spillway_forward_request_duration_seconds", dto.MetricType_HISTOGRAM, []string{"destination"}},
	{"spillway_destination_backlog_events", dto.MetricType_GAUGE, []string{"destination"}},
	{"spillway_destination_lag_seconds", dto.MetricType_GAUGE, []string{"destination"}},
	{"spillway_destination_up", dto.MetricType_GAUGE, []string{"destination"}},
}

var (
	endpointLabels = []string{"track", "identify", "page", "screen", "group", "alias", "batch", "import"}
	ruleLabels     = []string{"not_object", "missing_type", "unknown_type", "missing_identity",
		"missing_user_id", "missing_previous_id", "missing_event", "missing_group_id"}
	retryLabels = []string{"timeout", "network", "throttled", "server_error", "misconfigured", "rejected", "error"}
)

func TestMetricsAfterAKnownLoad(t *testing.T) {
	const key = "wk-metrics-0123456789"
	healthy, failing := newSink(t), newSink(t)
	failing.setStatus(http.StatusServiceUnavailable)
	p := startSpillway(t, "", nil, "--spool-dir", t.TempDir(), "--write-key", key,
		"--destination", "healthy="+healthy.URL, "--destination", "failing="+failing.URL,
		"--flush-interval", "20ms", "--backoff-min", "50ms", "--backoff-max", "200ms")
	dests := []string{"healthy", "failing"}

	// Before any load: every series of DESIGN.md, with exactly its labels,
	// and every known label combination at 0.
	m := scrapeMetrics(t, p.url())
	for _, s := range designSeries {
		f := m[s.name]
		if f == nil {
			t.Errorf("%s is missing", s.name)
			continue
		}
		if f.GetType() != s.typ {
			t.Errorf("%s is a %v, want a %v", s.name, f.GetType(), s.typ)
		}
		if got := m.labelNames(s.name); !slices.Equal(got, s.labels) {
			t.Errorf("%s has labels %v, want %v", s.name, got, s.labels)
		}
	}
	zero := func(name string, kv ...string) {
		t.Helper()
		if v, ok := m.value(name, kv...); !ok || v != 0 {
			t.Errorf("at start %s%v = %v (present %v), want 0", name, kv, v, ok)
		}
	}
	for _, ep := range endpointLabels {
		zero("spillway_events_received_total", "endpoint", ep)
		zero("spillway_request_duration_seconds", "endpoint", ep)
	}
	for _, r := range ruleLabels {
		zero("spillway_events_rejected_total", "reason", r)
	}
	for _, d := range dests {
		zero("spillway_events_delivered_total", "destination", d)
		zero("spillway_forward_request_duration_seconds", "destination", d)
		zero("spillway_destination_backlog_events", "destination", d)
		zero("spillway_destination_lag_seconds", "destination", d)
		for _, r := range []string{"rejected", "expired"} {
			zero("spillway_events_dead_lettered_total", "destination", d, "reason", r)
		}
		for _, r := range retryLabels {
			zero("spillway_forward_retries_total", "destination", d, "reason", r)
		}
		if v := m.must(t, "spillway_destination_up", "destination", d); v != 1 {
			t.Errorf("at start spillway_destination_up{%s} = %v, want 1", d, v)
		}
	}
	for _, name := range []string{"spillway_fsync_duration_seconds", "spillway_spool_bytes", "spillway_spool_blocks"} {
		m.must(t, name)
	}

	// The load: 10 batches of 50 valid events, one batch with 3
	// spec-invalid events among 2 valid ones, and 6 bad requests.
	ctx := t.Context()
	client := &http.Client{Timeout: 10 * time.Second}
	send := func(wk string, events []map[string]any, want int) {
		t.Helper()
		status, err := postBatch(ctx, client, p.url(), wk, events)
		if err != nil || status != want {
			t.Fatalf("POST /v1/batch: %d %v, want %d", status, err, want)
		}
	}
	for i := range 10 {
		send(key, trackEvents(fmt.Sprintf("load%d", i), 50), http.StatusOK)
	}
	mixed := trackEvents("mixed", 5)
	delete(mixed[1], "event")  // missing_event
	delete(mixed[2], "userId") // missing_identity
	delete(mixed[3], "event")  // missing_event
	send(key, mixed, http.StatusOK)
	const valid, invalid = 10*50 + 2, 3
	for range 3 {
		send("wk-unknown-key", trackEvents("unauth", 2), http.StatusUnauthorized)
	}
	for _, body := range []string{`{"batch":[`, `not json`, `{"batch":[]}`} {
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, p.url()+"/v1/batch", strings.NewReader(body))
		req.SetBasicAuth(key, "")
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Fatalf("POST %q = %d, want 400", body, resp.StatusCode)
		}
	}

	// Delivery settles: the healthy sink has every valid event, the
	// failing one is retried and keeps its backlog.
	testkit.Eventually(t, func() bool {
		unique, _ := healthy.Counts()
		return unique == valid
	}, "the healthy sink to receive every valid event")
	// A batch counts as delivered when its answer comes, and is
	// acknowledged (its backlog gone) a moment later.
	testkit.Eventually(t, func() bool {
		m = scrapeMetrics(t, p.url())
		_, got := healthy.Counts()
		return m.must(t, "spillway_events_delivered_total", "destination", "healthy") == float64(got) &&
			m.must(t, "spillway_destination_backlog_events", "destination", "healthy") == 0 &&
			m.must(t, "spillway_forward_retries_total", "destination", "failing", "reason", "server_error") > 0
	}, "the metrics to agree with the sinks")
	_, healthyGot := healthy.Counts()
	_, failingGot := failing.Counts()
	checks := []struct {
		what string
		got  float64
		want float64
	}{
		{"delivered to healthy = what the healthy sink received", m.must(t, "spillway_events_delivered_total", "destination", "healthy"), float64(healthyGot)},
		{"delivered to failing = what the failing sink received", m.must(t, "spillway_events_delivered_total", "destination", "failing"), float64(failingGot)},
		{"backlog of failing = what it has not received", m.must(t, "spillway_destination_backlog_events", "destination", "failing"), float64(valid - failingGot)},
		{"backlog of healthy", m.must(t, "spillway_destination_backlog_events", "destination", "healthy"), 0},
		{"healthy is up", m.must(t, "spillway_destination_up", "destination", "healthy"), 1},
		{"failing is down", m.must(t, "spillway_destination_up", "destination", "failing"), 0},
		{"received on /v1/batch, invalid included", m.must(t, "spillway_events_received_total", "endpoint", "batch"), valid + invalid},
		{"rejected: missing_event", m.must(t, "spillway_events_rejected_total", "reason", "missing_event"), 2},
		{"rejected: missing_identity", m.must(t, "spillway_events_rejected_total", "reason", "missing_identity"), 1},
		{"rejected: not_object", m.must(t, "spillway_events_rejected_total", "reason", "not_object"), 0},
		{"bad requests: unauthorized", m.must(t, "spillway_request_errors_total", "code", "unauthorized"), 3},
		{"bad requests: invalid_json", m.must(t, "spillway_request_errors_total", "code", "invalid_json"), 2},
		{"bad requests: empty_batch", m.must(t, "spillway_request_errors_total", "code", "empty_batch"), 1},
		{"requests timed on /v1/batch", m.must(t, "spillway_request_duration_seconds", "endpoint", "batch"), 11 + 3 + 3},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s: %v, want %v", c.what, c.got, c.want)
		}
	}
	if failingGot != 0 {
		t.Errorf("the failing sink accepted %d events", failingGot)
	}
	if lag := m.must(t, "spillway_destination_lag_seconds", "destination", "failing"); lag <= 0 {
		t.Errorf("lag of failing = %v, want > 0", lag)
	}
	if n := m.must(t, "spillway_forward_request_duration_seconds", "destination", "healthy"); n < 1 {
		t.Errorf("no send to healthy was timed")
	}
	if n := m.must(t, "spillway_fsync_duration_seconds"); n < 1 {
		t.Errorf("no fsync was timed")
	}
	for _, f := range m {
		for _, s := range f.GetMetric() {
			for _, l := range s.GetLabel() {
				if strings.Contains(l.GetValue(), key) || strings.Contains(l.GetValue(), "load0-") {
					t.Errorf("%s has an unbounded label %s=%q", f.GetName(), l.GetName(), l.GetValue())
				}
			}
		}
	}
}

// TestLogsShowDrainProgressAndNeverAWriteKey runs a shutdown that cannot
// drain (its destination answers 503) with every log on, and reads them.
func TestLogsShowDrainProgressAndNeverAWriteKey(t *testing.T) {
	t.Parallel()
	const key, wrongKey = "wk-logs-secret-0123456789", "wk-wrong-secret-9876543210"
	failing := newSink(t)
	failing.setStatus(http.StatusServiceUnavailable)
	p := startSpillway(t, "", nil, "--spool-dir", t.TempDir(), "--write-key", key,
		"--log-level", "debug", "--log-format", "json", "--shutdown-timeout", "2500ms",
		"--destination", "failing="+failing.URL, "--flush-interval", "20ms", "--backoff-min", "50ms", "--backoff-max", "100ms")

	client := &http.Client{Timeout: 10 * time.Second}
	if status, err := postBatch(t.Context(), client, p.url(), key, trackEvents("logs", 7)); err != nil || status != 200 {
		t.Fatalf("POST: %d %v", status, err)
	}
	if status, _ := postBatch(t.Context(), client, p.url(), wrongKey, trackEvents("wrong", 1)); status != 401 {
		t.Fatalf("POST with an unknown key: %d, want 401", status)
	}
	testkit.Eventually(t, func() bool {
		return strings.Contains(p.stderr.String(), "destination failing")
	}, "the destination to be reported failing")
	if code := p.stop(); code != 0 {
		t.Errorf("exit status %d, want 0", code)
	}
	logs := p.stderr.String()
	progress := 0
	for line := range strings.Lines(logs) {
		if strings.Contains(line, `"msg":"shutdown: draining"`) {
			progress++
			if !strings.Contains(line, `"left":{"failing":7}`) || !strings.Contains(line, `"events_left":7`) {
				t.Errorf("progress line without the events left per destination: %s", line)
			}
		}
	}
	if progress < 2 {
		t.Errorf("%d drain progress lines in 2.5s, want one a second:\n%s", progress, logs)
	}
	for _, k := range []string{key, wrongKey} {
		if strings.Contains(logs, k) {
			t.Errorf("the logs show write key %q:\n%s", k, logs)
		}
	}

	// A bad destination URL is reported without the write key it holds.
	var stderr bytes.Buffer
	code := run(t.Context(), []string{"run", "--spool-dir", t.TempDir(),
		"--destination", "seg=segment+https://api.segment.io?write_key=" + key + "&batch_events=0"}, &stderr, &stderr)
	if out := stderr.String(); code != 2 || !strings.Contains(out, "batch_events") || strings.Contains(out, key) {
		t.Errorf("a bad destination: exit %d, %q; want 2, the fault and no write key", code, out)
	}
}

// spillway sets a soft memory limit unless GOMEMLIMIT says otherwise, and
// leaves GOGC to the environment; the runtime's own gauges show which
// applies.
func TestMemoryLimitIsSpillwaysUnlessGOMEMLIMITIsSet(t *testing.T) {
	for _, tt := range []struct {
		gomemlimit, gogc  string
		wantLimit, wantGC float64
		dedupe            string
	}{
		{"", "", defaultMemoryLimit - float64(spool.Config{DedupeWindow: spool.DefaultDedupeWindow}.DedupeFilterBytes()), 100, "24h"},
		{"", "", defaultMemoryLimit, 100, "0"},
		{"128MiB", "", 128 << 20, 100, "24h"},
		{"", "25", defaultMemoryLimit, 25, "0"},
	} {
		t.Run("GOMEMLIMIT="+tt.gomemlimit+",GOGC="+tt.gogc+",dedupe="+tt.dedupe, func(t *testing.T) {
			t.Setenv("GOMEMLIMIT", tt.gomemlimit)
			t.Setenv("GOGC", tt.gogc)
			p := startSpillway(t, "", io.Discard, "--spool-dir", t.TempDir(), "--dedupe-window", tt.dedupe)
			m := scrapeMetrics(t, p.url())
			if got, ok := m.value("go_gc_gomemlimit_bytes"); !ok || got != tt.wantLimit {
				t.Errorf("go_gc_gomemlimit_bytes = %v (present %v), want %v", got, ok, tt.wantLimit)
			}
			if got, ok := m.value("go_gc_gogc_percent"); !ok || got != tt.wantGC {
				t.Errorf("go_gc_gogc_percent = %v (present %v), want %v", got, ok, tt.wantGC)
			}
		})
	}
}
