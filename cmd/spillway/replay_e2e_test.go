package main

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/spillwayhq/spillway/forwarders"
	"github.com/spillwayhq/spillway/internal/testkit"
)

// minioPutOptions avoid the aws-chunked signature, which the test store
// keeps inside the object.
var minioPutOptions = minio.PutObjectOptions{DisableContentSha256: true, SendContentMd5: true}

var archiveDay = time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)

// putDay archives a day of events as the archive lays them out: one object
// an hour, ten events each received ten minutes after the hour, each with
// its own timestamp and the write key it came with. It returns the
// events' messageIds by hour.
func putDay(t *testing.T, s *testkit.S3) [][]string {
	t.Helper()
	client, err := forwarders.NewS3Client(forwarders.ArchiveOptions{Endpoint: s.Endpoint, Region: "us-east-1", PathStyle: true, PlainHTTP: true})
	if err != nil {
		t.Fatal(err)
	}
	ids := make([][]string, 24)
	seq := uint64(0)
	for h := range 24 {
		var buf bytes.Buffer
		zw := gzip.NewWriter(&buf)
		received := archiveDay.Add(time.Duration(h)*time.Hour + 10*time.Minute)
		first := seq
		for i := range 10 {
			id := fmt.Sprintf("h%02d-%d", h, i)
			ids[h] = append(ids[h], id)
			fmt.Fprintf(zw, `{"writeKey":"wk-%d","type":"track","event":"Order Completed","userId":"u-%d","messageId":%q,"timestamp":"%s","receivedAt":"%s"}`+"\n",
				i%2, i, id, received.Add(-time.Minute).Format(time.RFC3339Nano), received.Format(time.RFC3339Nano))
			seq++
		}
		zw.Close()
		key := forwarders.ObjectKey("raw", "", received, first, seq-1)
		if _, err := client.PutObject(t.Context(), s.Bucket, key, &buf, int64(buf.Len()), minioPutOptions); err != nil {
			t.Fatal(err)
		}
	}
	return ids
}

func replayFrom(s *testkit.S3) string {
	return "s3://" + s.Bucket + "/raw?endpoint=" + s.Endpoint + "&tls=false&path_style=true"
}

func TestReplayOfAWindowDeliversExactlyItsEventsWithTheirIdsAndTimestamps(t *testing.T) {
	s := startArchiveStore(t)
	ids := putDay(t, s)
	api := newSegmentAPI(t)
	p := startSpillway(t, "", nil, "--spool-dir", t.TempDir(), "--flush-interval", "20ms",
		"--destination", "seg=segment+"+api.srv.URL, "--destination", "other=stdout://?include_types=identify")
	var stdout, stderr bytes.Buffer
	code := run(t.Context(), []string{"replay", "--from", replayFrom(s), "--to", p.url(), "--destination", "seg",
		"--since", "2026-12-01T05:00:00Z", "--until", "2026-12-01T09:00:00Z"}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	var want []string
	for h := 5; h < 9; h++ {
		want = append(want, ids[h]...)
	}
	testkit.Eventually(t, func() bool {
		events, _, _ := api.snapshot()
		return len(events) >= len(want)
	}, "replayed events at the destination")
	if code := p.stop(); code != 0 {
		t.Fatalf("exit %d: %s", code, p.stderr)
	}
	events, keys, _ := api.snapshot()
	if len(events) != len(want) {
		t.Errorf("%d events arrived, want the window's %d", len(events), len(want))
	}
	for _, id := range want {
		e := events[id]
		if e == nil {
			t.Errorf("%s did not arrive", id)
			continue
		}
		var h, i int
		fmt.Sscanf(id, "h%02d-%d", &h, &i)
		wantTS := archiveDay.Add(time.Duration(h)*time.Hour + 9*time.Minute).Format(time.RFC3339Nano)
		if ts, _ := time.Parse(time.RFC3339Nano, e["timestamp"].(string)); !ts.Equal(archiveDay.Add(time.Duration(h)*time.Hour + 9*time.Minute)) {
			t.Errorf("%s: timestamp %v, want the original %s", id, e["timestamp"], wantTS)
		}
		if keys[id] != fmt.Sprintf("wk-%d", i%2) {
			t.Errorf("%s: write key %q, want the original", id, keys[id])
		}
		if _, ok := e["writeKey"]; ok {
			t.Errorf("%s: the archive's writeKey field was sent in the event", id)
		}
	}
	if !strings.Contains(stderr.String(), "replay done: 5 objects, 40 events sent") {
		t.Errorf("progress: %s", stderr.String())
	}
}

// countingAPI is a /v1/import that counts each messageId and refuses every
// request past the first failAfter (0: none).
type countingAPI struct {
	*httptest.Server
	mu        sync.Mutex
	seen      map[string]int
	requests  int
	failAfter int
}

func newCountingAPI(t *testing.T) *countingAPI {
	a := &countingAPI{seen: map[string]int{}}
	a.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.mu.Lock()
		defer a.mu.Unlock()
		a.requests++
		if a.failAfter > 0 && a.requests > a.failAfter {
			http.Error(w, `{"success":false,"message":"stop"}`, http.StatusBadRequest)
			return
		}
		var body struct {
			Batch []struct {
				MessageID string `json:"messageId"`
			} `json:"batch"`
		}
		if r.URL.Path != "/v1/import" || json.NewDecoder(r.Body).Decode(&body) != nil {
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		for _, e := range body.Batch {
			a.seen[e.MessageID]++
		}
		w.Write([]byte(`{"success":true}`))
	}))
	t.Cleanup(a.Close)
	return a
}

func TestReplayResumesWithoutSendingAnythingTwice(t *testing.T) {
	s := startArchiveStore(t)
	ids := putDay(t, s)
	api := newCountingAPI(t)
	api.failAfter = 7 // the first run stops inside the archive
	resume := filepath.Join(t.TempDir(), "progress.json")
	args := []string{"replay", "--from", replayFrom(s), "--to", api.URL, "--resume", resume}
	var stderr bytes.Buffer
	if code := run(t.Context(), args, &bytes.Buffer{}, &stderr); code != 1 {
		t.Fatalf("interrupted run: exit %d, want 1: %s", code, stderr.String())
	}
	api.mu.Lock()
	api.failAfter, api.requests = 0, 0
	first := len(api.seen)
	api.mu.Unlock()
	if first == 0 || first == 240 {
		t.Fatalf("the first run sent %d events, want some of 240", first)
	}
	if code := run(t.Context(), args, &bytes.Buffer{}, &stderr); code != 0 {
		t.Fatalf("resumed run: exit %d: %s", code, stderr.String())
	}
	api.mu.Lock()
	defer api.mu.Unlock()
	for _, hour := range ids {
		for _, id := range hour {
			if api.seen[id] != 1 {
				t.Errorf("%s sent %d times, want once", id, api.seen[id])
			}
		}
	}
}

func TestReplayDryRunCountsAndSendsNothing(t *testing.T) {
	s := startArchiveStore(t)
	putDay(t, s)
	api := newCountingAPI(t)
	var stderr bytes.Buffer
	code := run(context.Background(), []string{"replay", "--from", replayFrom(s), "--to", api.URL, "--dry-run",
		"--since", "2026-12-01T22:00:00Z"}, &bytes.Buffer{}, &stderr)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	if api.requests != 0 || !strings.Contains(stderr.String(), "20 events would send") {
		t.Errorf("%d requests; stderr %s", api.requests, stderr.String())
	}
}

func TestReplayReadsAFileDestinationsOutput(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "events.ndjson")
	p := startSpillway(t, "", nil, "--spool-dir", t.TempDir(), "--flush-interval", "10ms", "--destination", "f=file://"+out)
	code, err := postBatch(t.Context(), http.DefaultClient, p.url(), "wk", trackEvents("file", 30))
	if err != nil || code != 200 {
		t.Fatalf("post: %d %v", code, err)
	}
	if code := p.stop(); code != 0 {
		t.Fatalf("exit %d: %s", code, p.stderr)
	}
	api := newCountingAPI(t)
	var stderr bytes.Buffer
	if code := run(t.Context(), []string{"replay", "--from", "file://" + out, "--to", api.URL, "--write-key", "wk"}, &bytes.Buffer{}, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	if len(api.seen) != 30 {
		t.Errorf("%d events replayed from the file, want 30", len(api.seen))
	}
}
