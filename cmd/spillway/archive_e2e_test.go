package main

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/valyala/fastjson"

	"github.com/spillwayhq/spillway/internal/testkit"
)

// startArchiveStore starts an S3 store on loopback; the spillway processes
// the test starts take their credentials from the environment it sets.
func startArchiveStore(t *testing.T) *testkit.S3 { return testkit.StartS3(t, "events") }

func archiveDest(s *testkit.S3, name, params string) string {
	return name + "=s3://" + s.Bucket + "/raw?endpoint=" + s.Endpoint +
		"&tls=false&path_style=true&backoff_min=10ms&backoff_max=200ms&" + params
}

// bucketIDs counts each messageId in the objects under prefix.
func bucketIDs(t *testing.T, s *testkit.S3, prefix string) map[string]int {
	t.Helper()
	seen := map[string]int{}
	for _, k := range s.Keys(t, prefix) {
		for _, l := range s.Lines(t, k) {
			seen[fastjson.GetString([]byte(l), "messageId")]++
		}
	}
	return seen
}

func TestKilledArchiveKeepsEveryEventOnceInTheBucket(t *testing.T) {
	cycles := 6
	if testing.Short() {
		cycles = 3
	}
	rng := rand.New(rand.NewPCG(crashSeed(t), 0))
	s := startArchiveStore(t)
	// Uploads take a while, so that kills land in the middle of some.
	s.SetFault(func(r *http.Request) *testkit.S3Fault {
		if r.Method == http.MethodPut {
			time.Sleep(time.Duration(rand.IntN(30)) * time.Millisecond) // the package's: safe from the server's goroutines
		}
		return nil
	})
	dir := t.TempDir()
	// Objects close at the flush interval, never at batch_bytes: time cuts
	// different ranges after a restart, which only the recorded range
	// keeps from becoming a second copy.
	args := []string{"--spool-dir", dir, "--destination", archiveDest(s, "archive", "flush=40ms")}

	var mu sync.Mutex
	acked := map[string]bool{}
	for cycle := range cycles {
		p := startSpillway(t, "", nil, args...)
		ctx, cancel := context.WithCancel(t.Context())
		wg := postAcked(ctx, p.url(), fmt.Sprintf("c%d", cycle), 4, 20, &mu, acked)
		time.Sleep(time.Duration(200+rng.IntN(600)) * time.Millisecond)
		p.kill()
		cancel()
		wg.Wait()
	}
	p := startSpillway(t, "", nil, args...)
	testkit.Eventually(t, func() bool {
		seen := bucketIDs(t, s, "raw/")
		for id := range acked {
			if seen[id] == 0 {
				return false
			}
		}
		return true
	}, "every acknowledged event in the bucket")
	if code := p.stop(); code != 0 {
		t.Fatalf("exit status %d: %s", code, p.stderr)
	}
	seen := bucketIDs(t, s, "raw/")
	for id, n := range seen {
		if n != 1 {
			t.Errorf("%s is %d times in the bucket", id, n)
		}
	}
	t.Logf("%d kills: %d acknowledged, %d events in %d objects, %d puts", cycles, len(acked), len(seen),
		len(s.Keys(t, "raw/")), s.Puts())
	if got := s.AccessKeys(); len(got) != 1 || got[0] != testkit.S3AccessKey {
		t.Errorf("requests signed with %v, want AWS_ACCESS_KEY_ID's", got)
	}
}

func TestFallbackThroughASIGTERMDrainAndReplayOfTheUndelivered(t *testing.T) {
	s := startArchiveStore(t)
	hook := newSink(t)
	hook.setStatus(http.StatusServiceUnavailable)
	p := startSpillway(t, "", nil, "--spool-dir", t.TempDir(), "--shutdown-timeout", "2s",
		"--destination", "hook="+hook.URL+"?fallback=archive&backoff_min=10ms&backoff_max=100ms",
		"--destination", archiveDest(s, "archive", "flush=20ms"))
	evs := trackEvents("fb", 50)
	if code, err := postBatch(t.Context(), http.DefaultClient, p.url(), "wk", evs); err != nil || code != 200 {
		t.Fatalf("post: %d %v", code, err)
	}
	if code := p.stop(); code != 0 {
		t.Fatalf("exit %d: %s", code, p.stderr)
	}
	if !strings.Contains(p.stderr.String(), "undelivered events handed to the fallback archive") {
		t.Errorf("no hand-off logged: %s", p.stderr)
	}
	handed := bucketIDs(t, s, "raw/undelivered/hook/")
	for _, e := range evs {
		if id := e["messageId"].(string); handed[id] != 1 {
			t.Errorf("%s handed off %d times, want once", id, handed[id])
		}
	}

	// Later, a fresh spillway whose hook works receives them by replay.
	fresh := newSink(t)
	q := startSpillway(t, "", nil, "--spool-dir", t.TempDir(), "--flush-interval", "20ms", "--destination", "hook="+fresh.URL)
	var stderr bytes.Buffer
	if code := run(t.Context(), []string{"replay", "--from", "s3://" + s.Bucket + "/raw?endpoint=" + s.Endpoint + "&tls=false&path_style=true",
		"--undelivered", "hook", "--to", q.url()}, &bytes.Buffer{}, &stderr); code != 0 {
		t.Fatalf("replay: exit %d: %s", code, stderr.String())
	}
	testkit.Eventually(t, func() bool { unique, _ := fresh.Counts(); return unique == len(evs) }, "replayed events at the hook")
	if code := q.stop(); code != 0 {
		t.Fatalf("exit %d: %s", code, q.stderr)
	}
	for _, e := range evs {
		if id := e["messageId"].(string); !fresh.Has(id) {
			t.Errorf("%s not delivered after the replay", id)
		}
	}
}
