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

// runTail prints the events the server receives, one JSON event per line,
// as stored (enriched, without write key), until interrupted; the ones
// that break the spec, dead-lettered as invalid, go to stderr with why. It shows
// what the server still holds first; the server records only while someone
// watches, so a first tail usually starts empty.
func runTail(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("spillway tail", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", defaultAdminAddr, "admin address of the running spillway")
	dest := fs.String("destination", "", "only events this destination receives")
	typ := fs.String("type", "", "only events of this type (track, identify, page, screen, group, alias)")
	if err := parseFlags(fs, args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(stderr, "spillway tail: %v\n", err)
		return 2
	}
	client := newAdminClient(*addr)
	q := url.Values{}
	if *dest != "" {
		q.Set("destination", *dest)
	}
	if *typ != "" {
		q.Set("type", *typ)
	}
	w := bufio.NewWriter(stdout)
	var cursor uint64
	for polled := false; ; polled = true {
		q.Set("since", strconv.FormatUint(cursor, 10))
		page, err := fetchTail(ctx, client, q)
		switch {
		case ctx.Err() != nil:
			return 0
		case err != nil && !polled:
			// A wrong address, flag or token: say so and stop.
			fmt.Fprintf(stderr, "spillway tail: %v\n", err)
			return 1
		case err != nil:
			// The server may be restarting: keep trying.
			fmt.Fprintf(stderr, "spillway tail: %v (retrying)\n", err)
		default:
			if page.Missed > 0 {
				fmt.Fprintf(stderr, "spillway tail: %d events went by between two polls\n", page.Missed)
			}
			for _, e := range page.Events {
				if e.Invalid != "" {
					// Not stored for delivery: stdout holds only what the
					// destinations get.
					fmt.Fprintf(stderr, "spillway tail: dead-lettered as invalid (%s): %s\n", e.Invalid, e.Event)
					continue
				}
				w.Write(e.Event)
				w.WriteByte('\n')
			}
			if err := w.Flush(); err != nil {
				return 1 // stdout is gone (a closed pipe)
			}
			cursor = page.Next
		}
		select {
		case <-ctx.Done():
			return 0
		case <-time.After(tailPoll):
		}
	}
}

func fetchTail(ctx context.Context, client *adminClient, q url.Values) (*proxy.TailPage, error) {
	ctx, cancel := context.WithTimeout(ctx, quickTimeout)
	defer cancel()
	resp, err := client.do(ctx, http.MethodGet, "/admin/events", q)
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
