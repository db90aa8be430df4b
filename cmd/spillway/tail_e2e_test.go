package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/spillwayhq/spillway/internal/testkit"
)

// tailProcess runs `spillway tail` and collects the messageIds it prints.
func tailProcess(t *testing.T, args ...string) (ids chan string, stderr *testkit.Buffer) {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), binary, append([]string{"tail"}, args...)...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr = &testkit.Buffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ids = make(chan string, 100)
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			var e map[string]any
			if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
				ids <- "not JSON: " + sc.Text()
				continue
			}
			id, _ := e["messageId"].(string)
			ids <- id
		}
		_, _ = io.Copy(io.Discard, out)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
		_ = cmd.Wait()
	})
	return ids, stderr
}

func nextID(t *testing.T, ids chan string) string {
	t.Helper()
	select {
	case id := <-ids:
		return id
	case <-time.After(testkit.Patience):
		t.Fatalf("tail printed nothing within %v", testkit.Patience)
		return ""
	}
}

func TestTailPrintsReceivedEventsLive(t *testing.T) {
	hook, other := newSink(t), newSink(t)
	p := startSpillway(t, "", nil, "--spool-dir", t.TempDir(), "--write-key", "wk-tail-secret",
		"--destination", "hook="+hook.URL, "--destination", "other="+other.URL)
	all, allErr := tailProcess(t, "--addr", p.addr)
	tracks, _ := tailProcess(t, "--addr", p.addr, "--type", "track")
	onlyOther, _ := tailProcess(t, "--addr", p.addr, "--destination", "other")

	// Any read arms recording; a tail whose first poll comes after the
	// POST still gets the events, as it starts from what is held.
	resp, err := http.Get(p.url() + "/admin/events")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	events := []map[string]any{
		{"type": "identify", "userId": "u1", "messageId": "tail-identify"},
		{"type": "track", "userId": "u1", "event": "Paid", "messageId": "tail-track"},
		{"type": "track", "userId": "u1", "event": "Private", "messageId": "tail-hook-only",
			"integrations": map[string]any{"All": false, "hook": true}},
		{"type": "track", "userId": "u1", "messageId": "tail-invalid"}, // no event: dead-lettered
	}
	if status, err := postBatch(t.Context(), http.DefaultClient, p.url(), "wk-tail-secret", events); err != nil || status != 200 {
		t.Fatalf("POST: %d %v", status, err)
	}
	// An event that every tail prints, after the others: whatever a tail
	// printed that it should not have comes before it.
	last := []map[string]any{{"type": "track", "userId": "u1", "event": "Last", "messageId": "tail-last"}}
	if status, err := postBatch(t.Context(), http.DefaultClient, p.url(), "wk-tail-secret", last); err != nil || status != 200 {
		t.Fatalf("POST: %d %v", status, err)
	}
	for name, c := range map[string]struct {
		ids  chan string
		want []string
	}{
		"every event":         {all, []string{"tail-identify", "tail-track", "tail-hook-only", "tail-last"}},
		"--type track":        {tracks, []string{"tail-track", "tail-hook-only", "tail-last"}},
		"--destination other": {onlyOther, []string{"tail-identify", "tail-track", "tail-last"}},
	} {
		var got []string
		for range c.want {
			got = append(got, nextID(t, c.ids))
		}
		if strings.Join(got, ",") != strings.Join(c.want, ",") {
			t.Errorf("%s: printed %v, want %v", name, got, c.want)
		}
	}

	// Its stderr comes through a pipe of its own, maybe after its stdout.
	testkit.Eventually(t, func() bool {
		e := allErr.String()
		return strings.Contains(e, "tail-invalid") && strings.Contains(e, "track requires event")
	}, "tail's stderr to show the invalid event and why: %v", allErr)

	var stderr bytes.Buffer
	if code := run(t.Context(), []string{"tail", "--addr", p.addr, "--destination", "nope"}, io.Discard, &stderr); code != 1 ||
		!strings.Contains(stderr.String(), "unknown destination") {
		t.Errorf("tail of an unknown destination: exit %d, %q; want 1 and why", code, stderr.String())
	}
}
