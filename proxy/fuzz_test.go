package proxy

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"testing"
	"unicode/utf8"
)

// FuzzParseBatch feeds arbitrary bodies to the request parser, as a batch
// and as a single event. Whatever the input, the parser must not panic, must
// refuse only with a 4xx, must accept only JSON (but for raw control
// characters in strings, which are stored escaped), and everything it hands the
// spool must be valid JSON without writeKey or sentAt, enriched, and within
// the limits.
//
// Seeds are in testdata/fuzz/FuzzParseBatch; run with
// go test -fuzz FuzzParseBatch ./proxy/
func FuzzParseBatch(f *testing.F) {
	f.Add([]byte(`{"batch":[{"type":"track","userId":"u","event":"e"}]}`))
	cfg := DefaultConfig()
	cfg.MaxEventBytes = 2048
	cfg.MaxRequestBytes = 16 << 10
	cfg.MaxBatchEvents = 32
	pp := newParser(cfg, newKeyring(nil), nil)
	in := newIngest()

	f.Fuzz(func(t *testing.T, body []byte) {
		for _, ep := range []endpoint{epBatch, epTrack, epAlias} {
			err := pp.parse(in, ep, body, []byte("hdr-key"), fixedNow)
			if err != nil {
				if status, _ := statusFor(err); status != http.StatusBadRequest && !errors.Is(err, errUnauthorized) {
					t.Fatalf("%s: refused with %d (%v); only 400 and 401 are client errors", ep, status, err)
				}
				continue
			}
			// Raw control characters inside strings are the one leniency:
			// they are stored escaped.
			if !json.Valid(body) && !bytes.ContainsFunc(body, isASCIIControl) {
				t.Fatalf("%s: accepted a body that is not JSON: %q", ep, body)
			}
			n := len(in.events) + len(in.dead)
			if n == 0 || n > cfg.MaxBatchEvents || (ep.single() && n != 1) {
				t.Fatalf("%s: %d events and dead letters", ep, n)
			}
			if len(in.rejected) != len(in.dead) {
				t.Fatalf("%s: %d rejected, %d dead letters", ep, len(in.rejected), len(in.dead))
			}
			for _, e := range in.events {
				checkStored(t, e.Data, true)
			}
			for _, d := range in.dead {
				checkStored(t, d.Event, false)
				if d.Error == "" || (d.Reason != "invalid" && d.Reason != "too_large") {
					t.Fatalf("dead letter without a rule: %+v", d)
				}
			}
		}
	})
}

func checkStored(t *testing.T, data []byte, valid bool) {
	t.Helper()
	if !json.Valid(data) || !utf8.Valid(data) {
		t.Fatalf("stored invalid JSON: %q", data)
	}
	if strictDecoderRefuses(data) {
		t.Fatalf("stored JSON that encoding/json refuses (a number out of range?): %q", data)
	}
	checkUniqueKeys(t, data)
	if cap(data) != len(data) {
		t.Fatalf("stored slice has spare capacity: a consumer could append into its neighbour")
	}
	if data[0] != '{' {
		if valid {
			t.Fatalf("valid event is not an object: %q", data)
		}
		return
	}
	seen := map[string]int{}
	dec := json.NewDecoder(bytes.NewReader(data))
	_, _ = dec.Token()
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			t.Fatal(err)
		}
		seen[tok.(string)]++
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			t.Fatal(err)
		}
	}
	for _, k := range []string{"writeKey", "sentAt"} {
		if seen[k] != 0 {
			t.Fatalf("stored event has %s: %s", k, data)
		}
	}
	for _, k := range []string{"receivedAt", "timestamp"} {
		if seen[k] != 1 {
			t.Fatalf("stored event has %d %s: %s", seen[k], k, data)
		}
	}
	if seen["messageId"] == 0 {
		t.Fatalf("stored event has no messageId: %s", data)
	}
}

func TestPlainWord(t *testing.T) {
	base := []byte("abcdefgh")
	for c := range 256 {
		for pos := range 8 {
			w := bytes.Clone(base)
			w[pos] = byte(c)
			want := c >= 0x20 && c < 0x80 && c != '"' && c != '\\'
			if got := plainWord(leUint64(w)); got != want {
				t.Fatalf("plainWord with %#x at %d = %v, want %v", c, pos, got, want)
			}
		}
	}
}

func leUint64(b []byte) uint64 {
	var w uint64
	for i := 7; i >= 0; i-- {
		w = w<<8 | uint64(b[i])
	}
	return w
}
