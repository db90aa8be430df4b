package forwarders

import (
	"context"
	"errors"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/spillwayhq/spillway/internal/testkit"
	"github.com/spillwayhq/spillway/spool"
)

// httpKind is one way of talking HTTP to a destination.
type httpKind struct {
	name string
	kind string
	url  func(base string) string // base is http://127.0.0.1:port
}

var httpKinds = []httpKind{
	{"segment", KindSegment, func(b string) string { return "segment+" + b + "?" }},
	{"webhook json", KindWebhook, func(b string) string { return b + "/hook?" }},
	{"webhook ndjson", KindWebhook, func(b string) string { return b + "/hook?format=ndjson&" }},
	{"webhook segment", KindWebhook, func(b string) string { return b + "/hook?format=segment&" }},
}

// TestHTTPKindsConformance runs every HTTP kind through the same server
// behaviours, end to end: spool, dispatcher, forwarder, server.
func TestHTTPKindsConformance(t *testing.T) {
	t.Parallel()
	longBody := `{"message":"bad event"}` + strings.Repeat(" ", 1500)
	scenarios := []struct {
		scenario string
		opts     string
		bad      []int
		answer   testkit.AnswerFunc
		check    func(t *testing.T, s *testkit.Sink, reg *prometheus.Registry, sp *spool.Spool)
	}{
		{
			scenario: "a server answering 200 gets every event once, in full batches",
			answer:   testkit.FirstN(0, testkit.Answer{}),
			check: func(t *testing.T, s *testkit.Sink, reg *prometheus.Registry, _ *spool.Spool) {
				reqs := s.Requests()
				if len(reqs) != 4 {
					t.Errorf("%d requests, want 4 batches of 5", len(reqs))
				}
				for _, r := range reqs {
					if len(r.IDs) != 5 {
						t.Errorf("a request held %d events, want 5", len(r.IDs))
					}
				}
				// Every known label combination is there from the start, at 0.
				want := `
# HELP spillway_events_dead_lettered_total Events moved to the dead-letter store instead of being delivered, by reason.
# TYPE spillway_events_dead_lettered_total counter
spillway_events_dead_lettered_total{destination="dest",reason="expired"} 0
spillway_events_dead_lettered_total{destination="dest",reason="rejected"} 0
# HELP spillway_events_delivered_total Events a destination accepted.
# TYPE spillway_events_delivered_total counter
spillway_events_delivered_total{destination="dest"} 20
# HELP spillway_forward_retries_total Batches sent again, by why the previous attempt failed.
# TYPE spillway_forward_retries_total counter
spillway_forward_retries_total{destination="dest",reason="error"} 0
spillway_forward_retries_total{destination="dest",reason="misconfigured"} 0
spillway_forward_retries_total{destination="dest",reason="network"} 0
spillway_forward_retries_total{destination="dest",reason="rejected"} 0
spillway_forward_retries_total{destination="dest",reason="server_error"} 0
spillway_forward_retries_total{destination="dest",reason="throttled"} 0
spillway_forward_retries_total{destination="dest",reason="timeout"} 0
# HELP spillway_destination_backlog_events Events stored and not yet done (delivered, filtered or dead-lettered) for the destination.
# TYPE spillway_destination_backlog_events gauge
spillway_destination_backlog_events{destination="dest"} 0
# HELP spillway_destination_lag_seconds Age of the destination's oldest event not yet done; 0 when its backlog is empty.
# TYPE spillway_destination_lag_seconds gauge
spillway_destination_lag_seconds{destination="dest"} 0
# HELP spillway_destination_up 1 while the destination accepts batches, 0 while it is failing or misconfigured.
# TYPE spillway_destination_up gauge
spillway_destination_up{destination="dest"} 1
`
				if err := testutil.GatherAndCompare(reg, strings.NewReader(want),
					"spillway_events_delivered_total", "spillway_events_dead_lettered_total", "spillway_forward_retries_total",
					"spillway_destination_backlog_events", "spillway_destination_lag_seconds", "spillway_destination_up"); err != nil {
					t.Error(err)
				}
				if n := metric(t, reg, "spillway_forward_request_duration_seconds", "destination", "dest"); n != 4 {
					t.Errorf("request duration observed %v times, want 4", n)
				}
			},
		},
		{
			scenario: "429 with Retry-After is retried no sooner than asked",
			opts:     "backoff_max=2s",
			answer:   testkit.FirstN(1, testkit.Answer{Status: 429, Header: http.Header{"Retry-After": {"1"}}}),
			check: func(t *testing.T, s *testkit.Sink, reg *prometheus.Registry, _ *spool.Spool) {
				reqs := s.Requests()
				if n := metric(t, reg, "spillway_forward_retries_total", "reason", "throttled"); n != 1 {
					t.Errorf("%v throttled retries, want 1", n)
				}
				refused := reqs[0]
				for _, r := range reqs[1:] {
					if slices.Contains(r.IDs, refused.IDs[0]) {
						if wait := r.At.Sub(refused.Done); wait < 950*time.Millisecond {
							t.Errorf("retried %v after a 429 asking for 1s", wait)
						}
						return
					}
				}
				t.Errorf("the throttled batch was never sent again")
			},
		},
		{
			scenario: "503 then 200 is retried one probe at a time, then at full speed",
			answer:   testkit.FirstN(3, testkit.Answer{Status: 503, Body: "down"}),
			check: func(t *testing.T, s *testkit.Sink, reg *prometheus.Registry, _ *spool.Spool) {
				if n := metric(t, reg, "spillway_forward_retries_total", "reason", "server_error"); n != 3 {
					t.Errorf("%v server_error retries, want 3", n)
				}
				if n := mostAtOnce(begunWhileFailing(s.Requests())); n > 1 {
					t.Errorf("%d requests at once while the destination was failing, want 1 probe", n)
				}
				testkit.Eventually(t, func() bool {
					return metric(t, reg, "spillway_destination_up", "destination", "dest") == 1
				}, "destination not reported up again")
			},
		},
		{
			scenario: "400 for any request holding a marked event dead-letters exactly the marked ones",
			bad:      []int{3, 7, 8, 16},
			answer:   refuseBad(longBody),
			check: func(t *testing.T, s *testkit.Sink, reg *prometheus.Registry, sp *spool.Spool) {
				dls := deadLetters(t, sp, "dest")
				for _, d := range dls {
					if d.Reason != spool.ReasonRejected || d.Status != 400 || d.Error != longBody[:errorBodyLimit] ||
						d.Attempts < 2 || d.Attempts > 4 || d.WriteKey != "wk-1" || d.At.IsZero() {
						t.Errorf("dead letter %+v", d)
					}
				}
				if n := metric(t, reg, "spillway_forward_retries_total", "reason", "rejected"); n == 0 {
					t.Errorf("no rejected retries counted")
				}
				for _, r := range s.Requests() {
					if isBad(&r) != (r.Status == 400) {
						t.Errorf("request %v answered %d", r.IDs, r.Status)
					}
				}
			},
		},
		{
			scenario: "a request hanging past the timeout is retried",
			// Room for the requests that do not hang, slowed by the race
			// detector on a loaded machine: at 1 s one of them timed out too.
			opts:   "timeout=5s",
			answer: testkit.FirstN(1, testkit.Answer{Hang: true}),
			check: func(t *testing.T, _ *testkit.Sink, reg *prometheus.Registry, _ *spool.Spool) {
				if n := metric(t, reg, "spillway_forward_retries_total", "reason", "timeout"); n != 1 {
					t.Errorf("%v timeout retries, want 1", n)
				}
			},
		},
		{
			scenario: "a reset connection is retried",
			answer:   testkit.FirstN(1, testkit.Answer{Reset: true}),
			check: func(t *testing.T, _ *testkit.Sink, reg *prometheus.Registry, _ *spool.Spool) {
				if n := metric(t, reg, "spillway_forward_retries_total", "reason", "network"); n != 1 {
					t.Errorf("%v network retries, want 1", n)
				}
			},
		},
	}
	for _, k := range httpKinds {
		t.Run(k.name, func(t *testing.T) {
			for _, sc := range scenarios {
				t.Run(sc.scenario, func(t *testing.T) {
					// Each scenario has its own sink, spool and registry;
					// the timeouts and Retry-After waits overlap.
					t.Parallel()
					s := testkit.NewSink(t, sc.answer)
					sp := openSpool(t, t.TempDir(), "dest")
					reg := prometheus.NewRegistry()
					evs := numbered(20, sc.bad...)
					appendEvents(t, sp, evs...)
					g := startGroup(t, sp, reg, "dest="+k.url(s.URL)+opts(testOpts, sc.opts))

					var good, bad []string
					for _, e := range evs {
						if e.bad {
							bad = append(bad, e.id)
						} else {
							good = append(good, e.id)
						}
					}
					testkit.Eventually(t, func() bool {
						return deliveredCount(s) == len(good) && sp.Backlog("dest").Events == 0
					}, "delivered %v, backlog %d", s.Delivered(), sp.Backlog("dest").Events)
					if err := shutdown(t, g, time.Second); err != nil {
						t.Errorf("Shutdown: %v", err)
					}

					if got := s.Delivered(); !slices.Equal(got, good) {
						t.Errorf("delivered %v, want %v", got, good)
					}
					if d := s.Duplicates(); len(d) > 0 {
						t.Errorf("delivered more than once: %v", d)
					}
					if got := deadIDs(deadLetters(t, sp, "dest")); !slices.Equal(got, bad) && len(bad)+len(got) > 0 {
						t.Errorf("dead letters %v, want %v", got, bad)
					}
					if n := metric(t, reg, "spillway_events_delivered_total", "destination", "dest"); int(n) != len(good) {
						t.Errorf("delivered counter %v, want %d", n, len(good))
					}
					if n := metric(t, reg, "spillway_events_dead_lettered_total", "reason", "rejected"); int(n) != len(bad) {
						t.Errorf("dead-lettered counter %v, want %d", n, len(bad))
					}
					for _, r := range s.Requests() {
						if k.kind == KindSegment && (!r.Gzip || r.User != "wk-1" || r.URI != "/v1/batch") {
							t.Errorf("segment request gzip=%v user=%q uri=%q", r.Gzip, r.User, r.URI)
						}
						if k.kind == KindWebhook && (r.Gzip || r.URI != "/hook") {
							t.Errorf("webhook request gzip=%v uri=%q: our parameters must not reach it", r.Gzip, r.URI)
						}
					}
					sc.check(t, s, reg, sp)
				})
			}
		})
	}
}

// TestEveryKindDeliversInOrderOnce runs the common contract against every
// kind, the line kinds included: with one batch in flight, every event
// arrives once, in spool order.
func TestEveryKindDeliversInOrderOnce(t *testing.T) {
	const opts = "batch_events=3&flush=5ms&concurrency=1"
	evs := numbered(10)
	want := ids(evs)
	for _, k := range httpKinds {
		t.Run(k.name, func(t *testing.T) {
			s := testkit.NewSink(t, nil)
			sp := openSpool(t, t.TempDir(), "dest")
			appendEvents(t, sp, evs...)
			startGroup(t, sp, nil, "dest="+k.url(s.URL)+opts)
			testkit.Eventually(t, func() bool { return deliveredCount(s) == len(evs) }, "not all delivered")
			if got := s.Order(); !slices.Equal(got, want) {
				t.Errorf("order %v, want %v", got, want)
			}
		})
	}
	t.Run("file", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "events.ndjson")
		sp := openSpool(t, t.TempDir(), "dest")
		appendEvents(t, sp, evs...)
		g := startGroup(t, sp, nil, "dest=file://"+path+"?"+opts)
		testkit.Eventually(t, func() bool { return sp.Backlog("dest").Events == 0 }, "not all acknowledged")
		if err := shutdown(t, g, time.Second); err != nil {
			t.Fatal(err)
		}
		// Everything acknowledged was fsynced before: the file has it all.
		if got := fileIDs(t, path); !slices.Equal(got, want) {
			t.Errorf("file holds %v, want %v", got, want)
		}
	})
	t.Run("stdout", func(t *testing.T) {
		var buf testkit.Buffer
		sp := openSpool(t, t.TempDir(), "dest")
		appendEvents(t, sp, evs...)
		d, err := ParseDestination("dest=stdout://?"+opts, Defaults{})
		if err != nil {
			t.Fatal(err)
		}
		d.Output = &buf
		startDests(t, sp, nil, []Destination{d}, nil)
		testkit.Eventually(t, func() bool { return len(lineIDs(t, buf.Bytes())) == len(evs) }, "not all written")
		if got := lineIDs(t, buf.Bytes()); !slices.Equal(got, want) {
			t.Errorf("stdout got %v, want %v", got, want)
		}
	})
}

// TestForwarderConformance checks each Forwarder alone: its kind, prompt
// return on cancellation, and Close.
func TestForwarderConformance(t *testing.T) {
	hang := testkit.NewSink(t, func(int, *testkit.Request) testkit.Answer { return testkit.Answer{Hang: true} })
	type mk struct {
		name, kind string
		spec       string
	}
	kinds := []mk{
		{"segment", KindSegment, "d=segment+" + hang.URL},
		{"webhook", KindWebhook, "d=" + hang.URL + "/hook"},
		{"file", KindFile, "d=file://" + filepath.Join(t.TempDir(), "f.ndjson")},
		{"stdout", KindStdout, "d=stdout://"},
	}
	batch := []spool.Record{{Seq: 1, WriteKey: "k", Data: []byte(`{"messageId":"a"}`)}}
	for _, k := range kinds {
		t.Run(k.name, func(t *testing.T) {
			// A send that waited for the timeout instead of its context
			// would hang the test: the timeout is an hour.
			d, err := ParseDestination(k.spec+"?timeout=1h", Defaults{})
			if err != nil {
				t.Fatal(err)
			}
			d.Output = &testkit.Buffer{}
			f, err := newForwarder(d)
			if err != nil {
				t.Fatal(err)
			}
			if f.Kind() != k.kind {
				t.Errorf("Kind() = %q, want %q", f.Kind(), k.kind)
			}

			ctx, cancel := context.WithCancel(t.Context())
			cancel()
			if err := f.Send(ctx, batch); !errors.Is(err, context.Canceled) || IsRetryable(err) {
				t.Errorf("Send with a cancelled context = %v, want context.Canceled, not retryable", err)
			}

			if k.kind == KindSegment || k.kind == KindWebhook {
				ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
				err := f.Send(ctx, batch)
				cancel()
				if !errors.Is(err, context.DeadlineExceeded) || IsRetryable(err) {
					t.Errorf("Send to a hanging server, cancelled: %v, want the context's deadline, not retryable", err)
				}
			}

			if err := f.Close(t.Context()); err != nil {
				t.Errorf("Close: %v", err)
			}
			if err := f.Close(t.Context()); err != nil {
				t.Errorf("second Close: %v", err)
			}
		})
	}
}
