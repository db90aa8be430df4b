package main

import (
	"bytes"
	"context"
	"encoding/json"
	"maps"
	"net/http"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spillwayhq/spillway/forwarders"
	"github.com/spillwayhq/spillway/internal/testkit"
)

// statusFields are the keys of a row of GET /admin/status and of
// `spillway status --json`.
var statusFields = []string{"backlog_events", "dead_lettered", "delivered", "kind", "lag_seconds", "last_error", "last_error_at", "name", "retried", "state"}

func TestStatusCommandAgainstARunningServer(t *testing.T) {
	t.Parallel()
	healthy, failing := newSink(t), newSink(t)
	failing.setStatus(http.StatusServiceUnavailable)
	p := startSpillway(t, "", nil, "--spool-dir", t.TempDir(),
		"--destination", "healthy="+healthy.URL, "--destination", "failing="+failing.URL,
		"--flush-interval", "20ms", "--backoff-min", "50ms", "--backoff-max", "200ms")
	if status, err := postBatch(t.Context(), http.DefaultClient, p.url(), "wk", trackEvents("status", 20)); err != nil || status != 200 {
		t.Fatalf("POST: %d %v", status, err)
	}
	testkit.Eventually(t, func() bool { n, _ := healthy.Counts(); return n == 20 }, "healthy to receive 20 events")

	statusCmd := func(args ...string) string {
		t.Helper()
		out, err := exec.CommandContext(t.Context(), binary, append([]string{"status", "--addr", p.addr}, args...)...).Output()
		if err != nil {
			t.Fatalf("spillway status %v: %v", args, err)
		}
		return string(out)
	}

	t.Run("--json prints forwarders.DestinationStatus rows", func(t *testing.T) {
		var rows []forwarders.DestinationStatus
		testkit.Eventually(t, func() bool {
			out := statusCmd("--json")
			var raw []map[string]any
			if err := json.Unmarshal([]byte(out), &raw); err != nil {
				t.Fatalf("status --json is not a JSON array: %v\n%s", err, out)
			}
			for _, r := range raw {
				if _, ok := r["last_error"]; !ok {
					r["last_error"], r["last_error_at"] = "", "" // omitted when empty
				}
				if got := slices.Sorted(maps.Keys(r)); !slices.Equal(got, statusFields) {
					t.Fatalf("status --json row keys = %v, want %v", got, statusFields)
				}
			}
			dec := json.NewDecoder(strings.NewReader(out))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&rows); err != nil {
				t.Fatal(err)
			}
			return len(rows) == 2 && rows[1].State == forwarders.StateFailing && rows[1].Retried > 0
		}, "failing to be failing and retried")
		h, f := rows[0], rows[1]
		if h.Name != "healthy" || h.Kind != "webhook" || h.State != forwarders.StateUp || h.BacklogEvents != 0 ||
			h.LagSeconds != 0 || h.Delivered != 20 || h.Retried != 0 || h.DeadLettered != 0 || h.LastError != "" {
			t.Errorf("healthy row = %+v", h)
		}
		if f.Name != "failing" || f.BacklogEvents != 20 || f.LagSeconds <= 0 || f.Delivered != 0 ||
			f.DeadLettered != 0 || !strings.Contains(f.LastError, "503") || time.Since(f.LastErrorAt) > time.Minute {
			t.Errorf("failing row = %+v", f)
		}
	})

	t.Run("the table has one row per destination with every column", func(t *testing.T) {
		lines := strings.Split(strings.TrimRight(statusCmd(), "\n"), "\n")
		if len(lines) != 3 {
			t.Fatalf("status printed %d lines, want a header and 2 rows:\n%s", len(lines), strings.Join(lines, "\n"))
		}
		header := strings.Fields(lines[0])
		want := []string{"DESTINATION", "KIND", "STATE", "BACKLOG", "LAG", "DELIVERED", "RETRIED", "DEAD-LETTERED", "LAST", "ERROR"}
		if !slices.Equal(header, want) {
			t.Errorf("header = %v, want %v", header, want)
		}
		h := strings.Fields(lines[1])
		if len(h) != 8 || h[0] != "healthy" || h[1] != "webhook" || h[2] != "up" || h[3] != "0" || h[4] != "0s" ||
			h[5] != "20" || h[6] != "0" || h[7] != "0" {
			t.Errorf("healthy row = %q", lines[1])
		}
		f := strings.Fields(lines[2])
		if len(f) < 9 || f[0] != "failing" || f[2] != "failing" || f[3] != "20" || f[4] == "0s" || f[5] != "0" || f[7] != "0" ||
			!strings.Contains(lines[2], "s ago: ") || !strings.Contains(lines[2], "503") {
			t.Errorf("failing row = %q", lines[2])
		}
		if retried, err := strconv.Atoi(f[6]); err != nil || retried < 1 {
			t.Errorf("failing row: retried %q, want >= 1", f[6])
		}
		// The columns line up under the header.
		if col := strings.Index(lines[0], "BACKLOG"); !strings.HasPrefix(lines[2][col:], "20 ") {
			t.Errorf("BACKLOG column misaligned:\n%s", strings.Join(lines, "\n"))
		}
	})

	t.Run("--watch refreshes every second", func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		out := &watchOutput{enough: 3, stop: cancel}
		var errOut bytes.Buffer
		if code := run(ctx, []string{"status", "--addr", p.addr, "--watch"}, out, &errOut); code != 0 {
			t.Fatalf("status --watch: exit %d: %s", code, errOut.String())
		}
		if n := len(out.tables); n != 3 {
			t.Fatalf("status --watch printed the table %d times, want 3 before it was stopped", n)
		}
		for i := 1; i < len(out.tables); i++ {
			if gap := out.tables[i].Sub(out.tables[i-1]); gap < time.Second {
				t.Errorf("status --watch refreshed after %v, want a second", gap)
			}
		}
		if n := strings.Count(out.String(), "\033[H\033[2J"); n != 2 {
			t.Errorf("status --watch cleared the screen %d times between 3 tables, want 2", n)
		}
	})

	t.Run("an unreachable server is an error", func(t *testing.T) {
		var out, errOut bytes.Buffer
		if code := run(t.Context(), []string{"status", "--addr", freeAddr(t)}, &out, &errOut); code != 1 ||
			!strings.Contains(errOut.String(), "reach spillway") {
			t.Errorf("exit %d, stderr %q; want 1 and why", code, errOut.String())
		}
	})
}

// watchOutput records when each table of status --watch was printed, and
// stops the command once it has printed enough.
type watchOutput struct {
	bytes.Buffer
	enough int
	stop   func()
	tables []time.Time
}

func (w *watchOutput) Write(p []byte) (int, error) {
	n, err := w.Buffer.Write(p)
	if c := strings.Count(w.String(), "DESTINATION"); c > len(w.tables) {
		w.tables = append(w.tables, time.Now())
		if len(w.tables) == w.enough {
			w.stop()
		}
	}
	return n, err
}
