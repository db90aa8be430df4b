package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/spillwayhq/spillway/proxy"
)

// tailPoll is how often `spillway tail` asks for new events. The server
// holds the last 200; faster than that between two polls, the gap is
// reported on stderr.
const tailPoll = 500 * time.Millisecond

// tailer follows GET /admin/events from its cursor.
type tailer struct {
	client *adminClient
	query  url.Values // the filters; since= is set at each poll
	cursor uint64
	out    *bufio.Writer
	stderr io.Writer
}

// runTail prints the events the server receives, one JSON event per line,
// as stored (enriched, without write key), until interrupted; the ones
// that break the spec, dead-lettered as invalid, go to stderr with why. It
// shows what the server still holds first; the server records only while
// someone watches, so a first tail usually starts empty.
func runTail(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	t, code := newTailer(args, stdout, stderr)
	if t == nil {
		return code
	}
	for first := true; ; first = false {
		page, err := t.fetch(ctx)
		switch {
		case ctx.Err() != nil:
			return 0
		case err != nil && first:
			// A wrong address, flag or token: say so and stop.
			fmt.Fprintf(stderr, "spillway tail: %v\n", err)
			return 1
		case err != nil:
			// The server may be restarting: keep trying.
			fmt.Fprintf(stderr, "spillway tail: %v (retrying)\n", err)
		default:
			if err := t.print(page); err != nil {
				return 1 // stdout is gone (a closed pipe)
			}
		}
		select {
		case <-ctx.Done():
			return 0
		case <-time.After(tailPoll):
		}
	}
}

// newTailer reads tail's flags; a nil tailer comes with the exit status.
func newTailer(args []string, stdout, stderr io.Writer) (*tailer, int) {
	fs := flag.NewFlagSet("spillway tail", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", defaultAdminAddr, "admin address of the running spillway")
	dest := fs.String("destination", "", "only events this destination receives")
	typ := fs.String("type", "", "only events of this type (track, identify, page, screen, group, alias)")
	if err := parseClientFlags(fs, args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, 0
		}
		fmt.Fprintf(stderr, "spillway tail: %v\n", err)
		return nil, 2
	}
	q := url.Values{}
	if *dest != "" {
		q.Set("destination", *dest)
	}
	if *typ != "" {
		q.Set("type", *typ)
	}
	return &tailer{client: newAdminClient(*addr), query: q, out: bufio.NewWriter(stdout), stderr: stderr}, 0
}

// fetch asks for the events received after the cursor.
func (t *tailer) fetch(ctx context.Context) (*proxy.TailPage, error) {
	ctx, cancel := context.WithTimeout(ctx, quickTimeout)
	defer cancel()
	t.query.Set("since", strconv.FormatUint(t.cursor, 10))
	resp, err := t.client.do(ctx, http.MethodGet, "/admin/events", t.query)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var page proxy.TailPage
	if err := json.NewDecoder(resp.Body).Decode(&page); err != nil {
		return nil, fmt.Errorf("decode events: %w", err)
	}
	return &page, nil
}

// print writes the page's events and moves the cursor past them.
func (t *tailer) print(page *proxy.TailPage) error {
	if page.Missed > 0 {
		fmt.Fprintf(t.stderr, "spillway tail: %d events went by between two polls\n", page.Missed)
	}
	for _, e := range page.Events {
		if e.Invalid != "" {
			// Not stored for delivery: stdout holds only what the
			// destinations get.
			fmt.Fprintf(t.stderr, "spillway tail: dead-lettered at ingest (%s): %s\n", e.Invalid, e.Event)
			continue
		}
		if len(e.Violations) > 0 {
			// Stored and delivered with context.violations: stdout has
			// the event, stderr says why it is flagged.
			fmt.Fprintf(t.stderr, "spillway tail: breaks the tracking plan (%s): %s\n", describeViolations(e.Violations), e.Event)
		}
		t.out.Write(e.Event)
		t.out.WriteByte('\n')
	}
	if err := t.out.Flush(); err != nil {
		return err
	}
	t.cursor = page.Next
	return nil
}
