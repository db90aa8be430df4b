package main

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spillwayhq/spillway/internal/testkit"
	"github.com/spillwayhq/spillway/spool"
)

// poisonSink records events like sink, but while rejecting it answers 400
// to any request holding an event whose messageId starts with "poison".
type poisonSink struct {
	*sink
	rejecting atomic.Bool
}

func newPoisonSink(t *testing.T) *poisonSink {
	ps := &poisonSink{}
	ps.rejecting.Store(true)
	ps.sink = newRefusingSink(t, func(r *testkit.Request) bool {
		return ps.rejecting.Load() && slices.ContainsFunc(r.IDs, func(id string) bool { return strings.HasPrefix(id, "poison") })
	})
	return ps
}

func runCLI(t *testing.T, args ...string) string {
	t.Helper()
	var out, errOut bytes.Buffer
	if code := run(t.Context(), args, &out, &errOut); code != 0 {
		t.Fatalf("spillway %s: exit %d: %s", strings.Join(args, " "), code, errOut.String())
	}
	return out.String()
}

func listDeadLetters(t *testing.T, args ...string) []spool.DeadLetter {
	t.Helper()
	var dls []spool.DeadLetter
	for _, line := range strings.Split(strings.TrimSpace(runCLI(t, append([]string{"dlq", "list"}, args...)...)), "\n") {
		if line == "" {
			continue
		}
		var d spool.DeadLetter
		if err := json.Unmarshal([]byte(line), &d); err != nil {
			t.Fatalf("dlq list line %q: %v", line, err)
		}
		dls = append(dls, d)
	}
	return dls
}

func TestDeadLetterRoundTripThroughTheCommandLine(t *testing.T) {
	hook := newPoisonSink(t)
	dir := t.TempDir()
	p := startSpillway(t, "", nil, "--spool-dir", dir, "--flush-interval", "20ms",
		"--destination", "hook="+hook.URL+"?backoff_min=20ms&backoff_max=200ms")
	evs := trackEvents("good", 10)
	for i := 0; i < 2; i++ {
		evs = append(evs, map[string]any{"type": "track", "event": "Bad", "userId": "u", "messageId": "poison-" + string(rune('a'+i))})
	}
	if code, err := postBatch(t.Context(), http.DefaultClient, p.url(), "secret-write-key", evs); err != nil || code != 200 {
		t.Fatalf("batch: %d %v", code, err)
	}
	testkit.Eventually(t, func() bool { u, _ := hook.Counts(); return u == 10 }, "the 10 good events")

	var dls []spool.DeadLetter
	testkit.Eventually(t, func() bool { dls = listDeadLetters(t, "--addr", p.addr); return len(dls) == 2 }, "two dead letters")
	for _, d := range dls {
		var ev map[string]any
		_ = json.Unmarshal(d.Event, &ev)
		id, _ := ev["messageId"].(string)
		if d.Destination != "hook" || d.Reason != spool.ReasonRejected || d.Status != 400 ||
			!strings.HasPrefix(id, "poison") || !strings.Contains(d.Error, `{"error":"refused"}`) || d.Attempts < 1 || d.At.IsZero() {
			t.Errorf("dead letter %+v (messageId %q)", d, id)
		}
		if strings.Contains(d.WriteKey, "secret") {
			t.Errorf("dlq list shows the write key: %q", d.WriteKey)
		}
	}

	hook.rejecting.Store(false)
	if out := runCLI(t, "dlq", "replay", "--addr", p.addr, "--destination", "hook"); !strings.Contains(out, "replayed: 2") {
		t.Fatalf("replay said %q", out)
	}
	testkit.Eventually(t, func() bool { return hook.Has("poison-a") && hook.Has("poison-b") }, "the replayed events")
	if got, _, _ := hook.Event("poison-a"); got["event"] != "Bad" {
		t.Errorf("replayed event arrived as %v", got)
	}
	if dls := listDeadLetters(t, "--addr", p.addr); len(dls) != 0 {
		t.Fatalf("%d dead letters left after replay", len(dls))
	}

	// An ingest-time reject, purged by reason.
	bad := []map[string]any{{"type": "track", "userId": "u", "messageId": "no-event-name"}}
	if code, err := postBatch(t.Context(), http.DefaultClient, p.url(), "wk", bad); err != nil || code != 200 {
		t.Fatalf("batch: %d %v", code, err)
	}
	if dls := listDeadLetters(t, "--addr", p.addr, "--reason", "invalid"); len(dls) != 1 {
		t.Fatalf("%d invalid dead letters, want 1", len(dls))
	}
	if out := runCLI(t, "dlq", "purge", "--addr", p.addr, "--reason", "invalid"); !strings.Contains(out, "purged: 1") {
		t.Fatalf("purge said %q", out)
	}
	if dls := listDeadLetters(t, "--addr", p.addr); len(dls) != 0 {
		t.Fatalf("%d dead letters left after purge", len(dls))
	}

	// On a stopped spool directory.
	hook.rejecting.Store(true)
	if code, err := postBatch(t.Context(), http.DefaultClient, p.url(), "wk", []map[string]any{{"type": "track", "event": "X", "userId": "u", "messageId": "poison-c"}}); err != nil || code != 200 {
		t.Fatalf("batch: %d %v", code, err)
	}
	testkit.Eventually(t, func() bool { return len(listDeadLetters(t, "--addr", p.addr)) == 1 }, "a dead letter")
	if code := p.stop(); code != 0 {
		t.Fatalf("exit %d", code)
	}
	if dls := listDeadLetters(t, "--spool-dir", dir, "--destination", "hook"); len(dls) != 1 {
		t.Fatalf("%d dead letters on the stopped spool, want 1", len(dls))
	}
	if out := runCLI(t, "dlq", "purge", "--spool-dir", dir); !strings.Contains(out, "purged: 1") {
		t.Fatalf("purge said %q", out)
	}
	if dls := listDeadLetters(t, "--spool-dir", dir); len(dls) != 0 {
		t.Fatalf("%d dead letters after purging the stopped spool", len(dls))
	}
}

// TestDLQReplayWaitsForTheServersAnswer: a replay of a large store takes
// as long as it takes. The command gave up after 10 s and reported a
// replay that went on as failed, and running it again sent every event
// twice. The server here answers after 11 s, as a long replay does.
func TestDLQReplayWaitsForTheServersAnswer(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/admin/dlq/replay" {
			http.Error(w, "want POST /admin/dlq/replay", http.StatusNotFound)
			return
		}
		select {
		case <-time.After(11 * time.Second):
		case <-r.Context().Done():
			return
		}
		w.Write([]byte(`{"count":260100}`))
	}))
	defer srv.Close()
	if out := runCLI(t, "dlq", "replay", "--addr", srv.Listener.Addr().String()); out != "replayed: 260100\n" {
		t.Errorf("dlq replay printed %q, want the server's count", out)
	}
}

// TestDLQOnADirectoryThatIsNotASpoolRefusesAndCreatesNothing: a mistyped
// --spool-dir used to get a fresh spool made in it and an answer of no dead
// letters, "purged: 0", as if all were well.
func TestDLQOnADirectoryThatIsNotASpoolRefusesAndCreatesNothing(t *testing.T) {
	others := t.TempDir()
	if err := os.WriteFile(filepath.Join(others, "notes.txt"), []byte("not a spool\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(others, "gen-data"), 0o700); err != nil {
		t.Fatal(err)
	}
	for name, dir := range map[string]string{"an empty directory": t.TempDir(), "a directory of other files": others} {
		before := testkit.DirNames(t, dir)
		for _, action := range []string{"list", "replay", "purge"} {
			var out, errOut bytes.Buffer
			code := run(t.Context(), []string{"dlq", action, "--spool-dir", dir}, &out, &errOut)
			if code != 1 || !strings.Contains(errOut.String(), "--spool-dir") || !strings.Contains(errOut.String(), "no spool") {
				t.Errorf("dlq %s on %s: exit %d, stdout %q, stderr %q; want 1 saying it holds no spool", action, name, code, out.String(), errOut.String())
			}
			if after := testkit.DirNames(t, dir); !slices.Equal(after, before) {
				t.Errorf("dlq %s on %s changed it from %v to %v", action, name, before, after)
			}
		}
	}
}
