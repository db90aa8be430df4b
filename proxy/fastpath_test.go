package proxy

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"
)

// FuzzFastPathAgrees holds the fast path to the tree parser: for any body,
// parse (which tries the fast path first) stores the same bytes, files the
// same dead letters and gives the same answer as the tree parser alone.
// Its seeds are this target's corpus in testdata, FuzzParseBatch's corpus
// and bodies the fast path takes.
func FuzzFastPathAgrees(f *testing.F) {
	for _, b := range fastPathBodies {
		f.Add([]byte(b))
	}
	f.Add(realisticBatch(3))
	for _, b := range corpusBodies(f, "FuzzParseBatch") {
		f.Add(b)
	}
	cfg := DefaultConfig()
	cfg.MaxEventBytes = 2048
	cfg.MaxRequestBytes = 16 << 10
	cfg.MaxBatchEvents = 32
	open := newParser(cfg, newKeyring(nil), nil)
	keyed := newParser(cfg, newKeyring([]string{"hdr-key", "wk"}), nil)
	// flagging puts violations into every event it keeps: the fast path
	// writes them where it saw the context end, the tree parser's events
	// are read again for it.
	flagging := newParser(cfg, newKeyring(nil), nil)
	planFile := filepath.Join(f.TempDir(), "plan.json")
	if err := os.WriteFile(planFile, []byte(`{"rules":[{"type":"COMMON","key":"","jsonSchema":{"required":["absent"]}}]}`), 0o600); err != nil {
		f.Fatal(err)
	}
	ps, err := Config{TrackingPlan: planFile, TrackingPlanMode: "flag"}.loadPlan()
	if err != nil {
		f.Fatal(err)
	}
	flagging.plan.Store(ps)
	both, tree := newIngest(), newIngest()

	f.Fuzz(func(t *testing.T, body []byte) {
		if len(body) == 0 || !utf8.Valid(body) {
			return // refused before either parser runs
		}
		for _, pp := range []*parser{open, keyed, flagging} {
			for _, ep := range []endpoint{epBatch, epTrack, epAlias} {
				// The same random bytes for the messageIds of both.
				both.rnd, tree.rnd = [len(both.rnd)]byte{}, [len(tree.rnd)]byte{}
				both.rndPos, tree.rndPos = 0, 0
				got := pp.parse(both, ep, body, []byte("hdr-key"), fixedNow)
				tree.reset()
				want := pp.parseTree(tree, ep, body, []byte("hdr-key"), fixedNow)
				if errText(got) != errText(want) {
					t.Fatalf("%s: answer %q, the tree parser's %q", ep, errText(got), errText(want))
				}
				if got != nil {
					continue
				}
				if len(both.events) != len(tree.events) || len(both.dead) != len(tree.dead) {
					t.Fatalf("%s: %d events and %d dead letters, the tree parser's %d and %d",
						ep, len(both.events), len(both.dead), len(tree.events), len(tree.dead))
				}
				for i := range both.events {
					g, w := both.events[i], tree.events[i]
					if !bytes.Equal(g.Data, w.Data) || g.WriteKey != w.WriteKey {
						t.Fatalf("%s: event %d stored as\n%s (%s)\nthe tree parser stores\n%s (%s)", ep, i, g.Data, g.WriteKey, w.Data, w.WriteKey)
					}
				}
				for i := range both.dead {
					g, w := both.dead[i], tree.dead[i]
					if !bytes.Equal(g.Event, w.Event) || g.Error != w.Error || g.WriteKey != w.WriteKey || both.rejected[i] != tree.rejected[i] {
						t.Fatalf("%s: dead letter %d %+v, the tree parser's %+v", ep, i, g, w)
					}
				}
			}
		}
	})
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// corpusBodies reads a []byte fuzz target's seed corpus.
func corpusBodies(tb testing.TB, target string) [][]byte {
	tb.Helper()
	files, err := filepath.Glob(filepath.Join("testdata", "fuzz", target, "*"))
	if err != nil || len(files) == 0 {
		tb.Fatalf("no corpus for %s: %v", target, err)
	}
	var bodies [][]byte
	for _, name := range files {
		data, err := os.ReadFile(name)
		if err != nil {
			tb.Fatal(err)
		}
		_, rest, _ := strings.Cut(string(data), "\n")
		lit := strings.TrimSpace(rest)
		lit = strings.TrimSuffix(strings.TrimPrefix(lit, "[]byte("), ")")
		b, err := strconv.Unquote(lit)
		if err != nil {
			tb.Fatalf("%s: %v", name, err)
		}
		bodies = append(bodies, []byte(b))
	}
	return bodies
}

// fastPathBodies are what SDKs send, which the fast path must take.
var fastPathBodies = []string{
	// analytics-node
	`{"batch":[{"type":"track","event":"Signed Up","userId":"u1","properties":{"plan":"pro","seats":3,"trial":false,"tags":["a","b"],"ref":null},"context":{"library":{"name":"@segment/analytics-node","version":"2.1.0"}},"messageId":"node-1","timestamp":"2024-05-01T11:59:58.123Z","_metadata":{"jsRuntime":"node"}}],"sentAt":"2024-05-01T11:59:59.000Z"}`,
	// analytics-python: spaces after separators, naive times
	`{"batch": [{"type": "identify", "userId": "u2", "traits": {"name": "Ada \"the\" Countess", "age": 36, "score": -1.5e3}, "timestamp": "2024-05-01T11:59:58.123456", "messageId": "py-1", "context": {"library": {"name": "analytics-python", "version": "2.3.2"}}, "integrations": {}}], "sentAt": "2024-05-01T11:59:59.000000"}`,
	// analytics.js single-event endpoint, with a write key in the body
	`{"type":"page","anonymousId":"a1","name":"Home","properties":{"path":"/","title":"Café ☕","url":"https://example.com/"},"writeKey":"wk","sentAt":"2024-05-01T11:59:59.000Z"}`,
	// an event refused by validation is still the fast path's
	`{"batch":[{"type":"track","userId":"u3"},{"type":"alias","userId":"u4","previousId":"u5"}]}`,
	// fields after the batch, found from the end of the body
	`{"batch":[{"type":"track","userId":"u7","event":"],\"x\":\"y"}] , "writeKey" : "wk","sentAt":"2024-05-01T11:59:59.000Z"}` + "\n",
	`{"sentAt":"2024-05-01T11:59:59.000Z","batch":[{"type":"track","userId":"u8","event":"e"}],"n":[1,{"a":"]"}]}`,
	// control characters as appendString writes them
	`{"batch":[{"type":"track","userId":"u6","event":"tab\there","properties":{"x":"line\nbreak \u001f \"q\" \\"}}]}`,
}

// TestFastPathTakesWhatSDKsSend checks the fast path is taken for the
// bodies SDKs send and declined for those only the tree parser handles.
func TestFastPathTakesWhatSDKsSend(t *testing.T) {
	pp := newParser(DefaultConfig(), newKeyring(nil), nil)
	in := newIngest()
	takes := func(ep endpoint, body string) bool {
		t.Helper()
		return pp.parseFast(in, ep, []byte(body), nil, fixedNow)
	}
	for i, b := range fastPathBodies {
		ep := epBatch
		if !strings.HasPrefix(b, `{"batch"`) {
			ep = epPage
		}
		if !takes(ep, b) {
			t.Errorf("body %d declined: %s", i, b)
		}
	}
	if !takes(epBatch, string(realisticBatch(100))) {
		t.Error("realistic batch declined")
	}
	for _, b := range []string{
		`{"batch":[{"type":"track","userId":"u","event":"e"}],"context":{"library":{"name":"analytics-go"}}}`, // merged
		`{"batch":[{"type":"track","userId":"u","event":"e","userId":"v"}]}`,                                  // repeated key
		`{"batch":[{"type":"track","userId":"u","event":"e","properties":{"a":1,"a":2}}]}`,
		`{"batch":[{"type":"track","userId":"u","event":"e","properties":{"url":"a\/b"}}]}`, // an escape written otherwise
		`{"batch":[{"type":"track","userId":"u","event":"e\u00e9"}]}`,
		`{"batch":[{"type":"tr\"ack","userId":"u","event":"e"}]}`, // read unescaped
		`{"batch":[{"type":"track","userId":"u","event":"e","timestamp":{"a":1}}]}`,
		`{"batch":[{"type":"track","userId":"u","event":"e","n":1.}]}`, // errors are the tree parser's
		`{"batch":[{"type":"track","userId":"u","event":"e"}]} x`,
		`{"batch":[]}`,
		`{"batch":[1]}`,
		`{"batch":[{"a":` + strings.Repeat(`[`, 40) + strings.Repeat(`]`, 40) + `}]}`,
	} {
		if takes(epBatch, b) {
			t.Errorf("fast path took %s", b)
		}
		if len(in.events) != 0 || len(in.out) != 0 {
			t.Errorf("a declined body left %d events, %d bytes", len(in.events), len(in.out))
		}
	}
}

// BenchmarkParse compares the fast path with the tree parser on a
// realistic 100-event batch, parsing and enrichment only. The last case
// adds a batch-level context, which the tree parser merges into each event.
func BenchmarkParse(b *testing.B) {
	body := realisticBatch(100)
	withContext := realisticBatchWithContext(100)
	pp := newParser(DefaultConfig(), newKeyring(nil), nil)
	in := newIngest()
	for _, path := range []struct {
		name  string
		body  []byte
		parse func() error
	}{
		{"fast", body, func() error { return pp.parse(in, epBatch, body, nil, fixedNow) }},
		{"tree", body, func() error { in.reset(); return pp.parseTree(in, epBatch, body, nil, fixedNow) }},
		{"tree_batch_context", withContext, func() error { return pp.parse(in, epBatch, withContext, nil, fixedNow) }},
	} {
		b.Run(path.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(path.body)))
			for b.Loop() {
				if err := path.parse(); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*100), "ns/event")
		})
	}
}
