//go:build !race

// About memory, which the race detector's own allocations would blur.

package forwarders

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"testing"
)

// TestAPostAllocatesLittleBesidesItsBody: a delivery's request body is a
// recycled buffer, and sending it must not allocate a copy buffer for it
// (41 KiB a post against 7-9 KiB, the server's side included).
func TestAPostAllocatesLittleBesidesItsBody(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
	}))
	defer srv.Close()
	c, err := newHTTPClient(Destination{Concurrency: 1, Timeout: 10e9})
	if err != nil {
		t.Fatal(err)
	}
	payload := bytes.Repeat([]byte("x"), 256<<10)
	send := func() {
		body := newRequestBody()
		body.buf = append(body.buf, payload...)
		if err := post(t.Context(), c, srv.URL, body, nil); err != nil {
			t.Fatal(err)
		}
	}
	send() // the connection, the pools
	const n = 50
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range n {
		send()
	}
	runtime.ReadMemStats(&after)
	// The server's side of each request counts here too.
	if per := (after.TotalAlloc - before.TotalAlloc) / n; per > 24<<10 {
		t.Errorf("%d bytes allocated per post, want under 24 KiB", per)
	}
}
