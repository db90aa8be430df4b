package forwarders

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"slices"
	"sort"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/spillwayhq/spillway/internal/testkit"
	"github.com/spillwayhq/spillway/spool"
)

// testOpts are short enough that retries, backoffs and flushes take
// milliseconds. The timeout is not: an answer on loopback takes well over
// 300ms on a loaded machine, and a send that times out is sent again.
const testOpts = "batch_events=5&flush=10ms&concurrency=2&timeout=10s&backoff_min=5ms&backoff_max=50ms"

// opts merges query strings, later values winning.
func opts(qs ...string) string {
	v := url.Values{}
	for _, q := range qs {
		m, err := url.ParseQuery(q)
		if err != nil {
			panic(err)
		}
		for k, x := range m {
			v[k] = x
		}
	}
	return v.Encode()
}

// openSpool opens a real spool in dir; the test closes it at its end.
func openSpool(t *testing.T, dir string, consumers ...string) *spool.Spool {
	t.Helper()
	sp, err := spool.Open(spool.Config{Dir: dir, Consumers: consumers}, testLogger(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := sp.Close(context.Background()); err != nil {
			t.Error(err)
		}
	})
	return sp
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelInfo}))
}

// ev is a test event; its messageId names it.
type ev struct {
	id    string
	key   string // write key
	typ   string // default "track"
	bad   bool   // the reject scenarios refuse requests holding it
	extra string // more top-level JSON fields, with a leading comma
}

func (e ev) json() []byte {
	typ := e.typ
	if typ == "" {
		typ = "track"
	}
	return fmt.Appendf(nil, `{"type":%q,"event":"Test Event","userId":"u-1","messageId":%q,"properties":{"bad":%v}%s}`,
		typ, e.id, e.bad, e.extra)
}

// numbered returns n events m-000, m-001, ...; those whose index is in bad
// are marked.
func numbered(n int, bad ...int) []ev {
	out := make([]ev, n)
	for i := range out {
		out[i] = ev{id: fmt.Sprintf("m-%03d", i), key: "wk-1", bad: slices.Contains(bad, i)}
	}
	return out
}

func ids(evs []ev) []string {
	out := make([]string, len(evs))
	for i, e := range evs {
		out[i] = e.id
	}
	return out
}

func appendEvents(t *testing.T, sp testStore, evs ...ev) {
	t.Helper()
	in := make([]spool.Event, len(evs))
	for i, e := range evs {
		in[i] = spool.Event{WriteKey: e.key, Data: e.json()}
	}
	if err := sp.Append(t.Context(), in, nil); err != nil {
		t.Fatal(err)
	}
}

// startGroup starts forwarding to dests (NAME=URL specs) from sp; the test
// shuts it down at its end unless it did so itself.
func startGroup(t *testing.T, sp store, reg prometheus.Registerer, specs ...string) *Group {
	t.Helper()
	dests, err := ParseDestinations(specs, Defaults{})
	if err != nil {
		t.Fatal(err)
	}
	return startDests(t, sp, reg, dests, nil)
}

func startDests(t *testing.T, sp store, reg prometheus.Registerer, dests []Destination, fwds []Forwarder) *Group {
	t.Helper()
	return startLogged(t, sp, testLogger(t), reg, dests, fwds)
}

// startFake starts forwarding from sp through f, to a destination with the
// name and options of spec (a NAME=stdout://?... spec will do).
func startFake(t *testing.T, sp store, spec string, f Forwarder) *Group {
	t.Helper()
	return startDests(t, sp, nil, []Destination{parse(t, spec)}, []Forwarder{f})
}

// startLogged is startDests logging to log.
func startLogged(t *testing.T, sp store, log *slog.Logger, reg prometheus.Registerer, dests []Destination, fwds []Forwarder) *Group {
	t.Helper()
	g, err := newGroup(dests, fwds, sp, log, reg)
	if err != nil {
		t.Fatal(err)
	}
	g.Start()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		_ = g.Shutdown(ctx)
	})
	return g
}

// parse parses one NAME=URL spec with the package defaults.
func parse(t *testing.T, spec string) Destination {
	t.Helper()
	d, err := ParseDestination(spec, Defaults{})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func shutdown(t *testing.T, g *Group, timeout time.Duration) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return g.Shutdown(ctx)
}

// backlog is the destination's backlog when a failure message is
// formatted.
func backlog(sp store, dest string) func() any {
	return func() any { return sp.Backlog(dest).Events }
}

func deadLetters(t *testing.T, sp testStore, dest string) []spool.DeadLetter {
	t.Helper()
	var out []spool.DeadLetter
	err := sp.DeadLetters(spool.Filter{Destination: dest}, func(d spool.DeadLetter) error {
		out = append(out, d)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func deadIDs(dls []spool.DeadLetter) []string {
	out := make([]string, len(dls))
	for i, d := range dls {
		out[i] = testkit.MessageID(d.Event)
	}
	sort.Strings(out)
	return out
}

// metric reads one series from reg; 0 when absent.
func metric(t *testing.T, reg prometheus.Gatherer, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				if !hasLabel(m, labels[i], labels[i+1]) {
					continue next
				}
			}
			switch {
			case m.Counter != nil:
				return m.Counter.GetValue()
			case m.Gauge != nil:
				return m.Gauge.GetValue()
			case m.Histogram != nil:
				return float64(m.Histogram.GetSampleCount())
			}
		}
	}
	return 0
}

func hasLabel(m *dto.Metric, name, value string) bool {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue() == value
		}
	}
	return false
}

// isBad reports whether the request holds an event the reject scenarios
// refuse (see ev.bad).
func isBad(r *testkit.Request) bool {
	for _, e := range r.Events {
		var f struct {
			Properties struct {
				Bad bool `json:"bad"`
			} `json:"properties"`
		}
		if json.Unmarshal(e, &f) == nil && f.Properties.Bad {
			return true
		}
	}
	return false
}

// refuseBad answers 400 with body to a request holding a bad event, 200
// to the others.
func refuseBad(body string) testkit.AnswerFunc {
	return func(_ int, r *testkit.Request) testkit.Answer {
		if isBad(r) {
			return testkit.Answer{Status: 400, Body: body}
		}
		return testkit.Answer{}
	}
}

// always answers every request with a.
func always(a testkit.Answer) testkit.AnswerFunc {
	return func(int, *testkit.Request) testkit.Answer { return a }
}

// eventKeys returns the events' "key" fields, where set.
func eventKeys(r testkit.Request) []string {
	var out []string
	for _, e := range r.Events {
		var f struct {
			Key string `json:"key"`
		}
		if json.Unmarshal(e, &f) == nil && f.Key != "" {
			out = append(out, f.Key)
		}
	}
	return out
}

// deliveredCount is how many distinct events the sink took.
func deliveredCount(s *testkit.Sink) int {
	n, _ := s.Counts()
	return n
}

// mostAtOnce is the most requests in flight at the same moment.
func mostAtOnce(reqs []testkit.Request) int {
	most := 0
	for _, r := range reqs {
		n := 0
		for _, o := range reqs {
			if !o.At.After(r.At) && o.Done.After(r.At) {
				n++
			}
		}
		most = max(most, n)
	}
	return most
}

// begunWhileFailing returns the requests that came after a retryable
// answer (429, 5xx) and before the next success: those the gate lets
// through one at a time.
func begunWhileFailing(reqs []testkit.Request) []testkit.Request {
	var out []testkit.Request
	for _, r := range reqs {
		var last testkit.Request // the last one answered before r came
		for _, o := range reqs {
			if o.Done.Before(r.At) && o.Done.After(last.Done) {
				last = o
			}
		}
		if last.Status == 429 || last.Status >= 500 {
			out = append(out, r)
		}
	}
	return out
}

func fileIDs(t *testing.T, path string) []string {
	b, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return lineIDs(t, b)
}

func lineIDs(t *testing.T, b []byte) []string {
	evs, err := testkit.DecodeLines(b)
	if err != nil {
		t.Fatalf("%v in %q", err, b)
	}
	out := make([]string, len(evs))
	for i, e := range evs {
		out[i] = testkit.MessageID(e)
	}
	return out
}
