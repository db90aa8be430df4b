package main

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
)

// TestClientCommandsTakeNoServerSettingFromTheEnvironment: the commands
// run where the server's environment is set (docker exec, kubectl exec),
// and read its variables as their own flags: with the image's
// SPILLWAY_SPOOL_DIR, `spillway dlq list` opened the spool directory
// instead of asking the running server (and failed on Badger's lock); with
// the sidecar manifest's SPILLWAY_DESTINATION, dlq filtered on the
// server's destination list and tail was answered 400. A variable of the
// commands' own, SPILLWAY_ADDR, still counts.
func TestClientCommandsTakeNoServerSettingFromTheEnvironment(t *testing.T) {
	var (
		mu    sync.Mutex
		asked []string
		tail  context.CancelFunc // ends the tail at its first poll
	)
	admin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		asked = append(asked, r.URL.RequestURI())
		switch r.URL.Path {
		case "/admin/dlq": // no dead letters
		case "/admin/events":
			w.Write([]byte(`{"next":0,"missed":0,"events":[]}`))
			tail()
		default:
			http.NotFound(w, r)
		}
	}))
	defer admin.Close()
	t.Setenv("SPILLWAY_ADDR", admin.Listener.Addr().String())
	t.Setenv("SPILLWAY_SPOOL_DIR", t.TempDir())
	t.Setenv("SPILLWAY_DESTINATION", "hook=https://hooks.example.com/events seg=segment+https://api.segment.io")

	for _, args := range [][]string{{"dlq", "list"}, {"tail"}} {
		ctx, cancel := context.WithCancel(t.Context())
		mu.Lock()
		tail = cancel
		mu.Unlock()
		var stdout, stderr bytes.Buffer
		if code := run(ctx, args, &stdout, &stderr); code != 0 {
			t.Errorf("spillway %v: exit %d, stderr %q; want 0", args, code, stderr.String())
		}
		cancel()
	}
	mu.Lock()
	defer mu.Unlock()
	if want := []string{"/admin/dlq", "/admin/events?since=0"}; !slices.Equal(asked, want) {
		t.Errorf("the server was asked %q, want %q: unfiltered, from SPILLWAY_ADDR", asked, want)
	}
}
