package forwarders

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spillwayhq/spillway/internal/testkit"
)

func TestSegmentKind(t *testing.T) {
	keyed := func(n int, keys ...string) []ev {
		evs := numbered(n)
		for i := range evs {
			evs[i].key = keys[i%len(keys)]
			evs[i].extra = fmt.Sprintf(`,"key":%q`, evs[i].key)
		}
		return evs
	}

	// deliverKeyed delivers 10 events under two keys, and returns the sink
	// that took them.
	deliverKeyed := func(t *testing.T, params string) *testkit.Sink {
		s := testkit.NewSink(t, nil)
		sp := newMemStore("seg")
		appendEvents(t, sp, keyed(10, "k1", "k2")...)
		startGroup(t, sp, nil, "seg=segment+"+s.URL+"?batch_events=10&flush=5ms"+params)
		testkit.Eventually(t, func() bool { return deliveredCount(s) == 10 }, "not delivered")
		return s
	}

	t.Run("each request is gzipped and authenticated with its events' own write key", func(t *testing.T) {
		s := deliverKeyed(t, "")
		users := map[string]int{}
		for _, r := range s.Requests() {
			users[r.User]++
			if !r.Gzip || r.ContentType != "application/json" {
				t.Errorf("gzip=%v content type %q", r.Gzip, r.ContentType)
			}
			for _, k := range eventKeys(r) {
				if k != r.User {
					t.Errorf("an event of key %s sent under %s", k, r.User)
				}
			}
		}
		if users["k1"] != 1 || users["k2"] != 1 || len(users) != 2 {
			t.Errorf("requests per key %v, want one each", users)
		}
	})

	t.Run("write_key overrides the events' keys", func(t *testing.T) {
		reqs := deliverKeyed(t, "&write_key=override").Requests()
		if len(reqs) != 1 || reqs[0].User != "override" {
			t.Errorf("requests %+v, want one under the override key", reqs)
		}
	})

	t.Run("sentAt is the time of sending, not of storing", func(t *testing.T) {
		s := testkit.NewSink(t, testkit.FirstN(1, testkit.Answer{Status: 503}))
		sp := newMemStore("seg")
		appendEvents(t, sp, numbered(3)...)
		startGroup(t, sp, nil, "seg=segment+"+s.URL+"?flush=5ms&backoff_min=300ms&backoff_max=400ms")
		testkit.Eventually(t, func() bool { return deliveredCount(s) == 3 }, "not delivered")
		reqs := s.Requests()
		if len(reqs) != 2 {
			t.Fatalf("%d requests, want 2", len(reqs))
		}
		// sentAt is the sending time cut to milliseconds: it comes before
		// the request arrives, and the retry's no sooner than backoff_min
		// after the first try's answer, long after the events were stored.
		for i, r := range reqs {
			sent, err := time.Parse(time.RFC3339Nano, r.SentAt)
			if err != nil || !strings.HasSuffix(r.SentAt, "Z") {
				t.Fatalf("sentAt %q: %v", r.SentAt, err)
			}
			if sent.After(r.At) {
				t.Errorf("sentAt %v is after the request arrived, %v", sent, r.At)
			}
			if earliest := reqs[0].Done.Add(300 * time.Millisecond).Truncate(time.Millisecond); i == 1 && sent.Before(earliest) {
				t.Errorf("the retry's sentAt %v is before its backoff ended, %v", sent, earliest)
			}
		}
	})

	t.Run("a refused event under one key does not hold back the other key's events", func(t *testing.T) {
		s := testkit.NewSink(t, refuseBad("bad"))
		sp := newMemStore("seg")
		evs := keyed(10, "k1", "k2")
		evs[5].bad = true // a k2 event
		appendEvents(t, sp, evs...)
		startGroup(t, sp, nil, "seg=segment+"+s.URL+"?batch_events=10&flush=5ms")
		testkit.Eventually(t, func() bool { return sp.Backlog("seg").Events == 0 }, "not done")
		if got := deadIDs(deadLetters(t, sp, "seg")); !slices.Equal(got, []string{"m-005"}) {
			t.Errorf("dead letters %v, want [m-005]", got)
		}
		if d := s.Duplicates(); len(d) > 0 || deliveredCount(s) != 9 {
			t.Errorf("delivered %v, duplicates %v", s.Delivered(), d)
		}
		for _, r := range s.Requests() {
			if r.User == "k1" && r.Status != 200 {
				t.Errorf("a k1 request was answered %d", r.Status)
			}
		}
	})
}
