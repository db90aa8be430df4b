package main

import (
	"net/http"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/spillwayhq/spillway/internal/testkit"
)

// A Segment upstream that refuses one write key: the other keeps flowing,
// `spillway status` and /metrics show the refused key's lane, masked; the
// process is killed with kill -9 while the key's events are parked, and
// after a restart, once the key is fixed upstream, every one arrives.
func TestRefusedWriteKeyWaitsInItsLaneThroughAKill(t *testing.T) {
	const refusedKey, goodKey = "rkey-revoked-123", "gkey-fine-456"
	var fixed atomic.Bool
	upstream := testkit.NewSink(t, func(_ int, r *testkit.Request) testkit.Answer {
		if r.User == refusedKey && !fixed.Load() {
			return testkit.Answer{Status: http.StatusUnauthorized, Body: `{"message":"invalid write key"}`}
		}
		return testkit.Answer{}
	})
	dir := t.TempDir()
	args := []string{"--spool-dir", dir, "--destination", "seg=segment+" + upstream.URL,
		"--flush-interval", "20ms", "--backoff-min", "50ms", "--backoff-max", "200ms"}
	p := startSpillway(t, "", nil, args...)
	for i, key := range []string{refusedKey, goodKey} {
		if status, err := postBatch(t.Context(), http.DefaultClient, p.url(), key, trackEvents(key[:4], 30)); err != nil || status != 200 {
			t.Fatalf("POST %d: %d %v", i, status, err)
		}
	}
	testkit.Eventually(t, func() bool {
		n, _ := upstream.Counts()
		s := scrapeMetrics(t, p.url())
		lanes, _ := s.value("spillway_destination_lanes", "destination", "seg", "state", "misconfigured")
		parked, _ := s.value("spillway_destination_parked_events", "destination", "seg")
		return n == 30 && lanes == 1 && parked == 30
	}, "the good key's 30 events delivered and the refused key's 30 parked in its lane")

	out, err := exec.CommandContext(t.Context(), binary, "status", "--addr", p.addr).Output()
	if err != nil {
		t.Fatalf("spillway status: %v", err)
	}
	table := string(out)
	if !strings.Contains(table, "seg: 1 write key(s) not up") || !strings.Contains(table, "WRITE KEY") {
		t.Errorf("status lists no lane:\n%s", table)
	}
	var row string
	for line := range strings.Lines(table) {
		if strings.HasPrefix(line, "rkey…") {
			row = line
		}
	}
	if f := strings.Fields(row); len(f) < 5 || f[1] != "misconfigured" || f[2] != "30" || !strings.Contains(row, "401") {
		t.Errorf("the refused key's row = %q in:\n%s", row, table)
	}
	if strings.Contains(table, refusedKey) || strings.Contains(table, goodKey) {
		t.Errorf("status shows a write key:\n%s", table)
	}

	p.kill() // SIGKILL
	fixed.Store(true)
	p = startSpillway(t, "", nil, args...)
	testkit.Eventually(t, func() bool { n, _ := upstream.Counts(); return n == 60 },
		"every event delivered after the restart: %v", func() any { n, _ := upstream.Counts(); return n })
	for _, id := range upstream.Delivered() {
		_, by, _ := upstream.Event(id)
		if !strings.HasPrefix(by.User, id[:4]) {
			t.Errorf("event %s delivered under another write key", id)
		}
	}
	if code := p.stop(); code != 0 {
		t.Errorf("exit %d: %s", code, p.stderr)
	}
}
