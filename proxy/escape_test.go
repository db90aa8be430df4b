package proxy

import (
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"
)

// escapeCases are string contents as a client may write them inside a JSON
// string, escapes included.
var escapeCases = []string{
	`plain`, `\"quoted\" \\ \/ \b\f\n\r\t`, `\u00e9\u00E9`, `\u0000\u001f`,
	`\ud83d\ude00`, `\uD83D\uDE00`, // a valid pair, either case
	`\ud800`, `\udc00`, `\ud800x`, `x\udfff`, // lone surrogates
	`\ud800\u0041`, `\ud83d\u00e9`, `\ud800\ud800`, `\ud800\udbff\udfff`, `\udc00\ud800`,
	`\\ud800`, `\\\ud800`, `\ud800\\udc00`,
	`\q`, `\u12`, `\uZZZZ`, `\u12G4`, `\é`, `\U0001F600`, `\x41`, `\'`,
}

// TestEscapesAsEncodingJSON: whatever escapes a string holds, the stored
// event holds the string encoding/json reads from the request (lone
// surrogates as U+FFFD, every other character kept), in values and in keys;
// where encoding/json refuses the request, or it is not UTF-8, it is
// refused with a 400.
func TestEscapesAsEncodingJSON(t *testing.T) {
	for _, s := range escapeCases {
		checkEscapeFidelity(t, s)
	}
}

// FuzzStringFidelity is TestEscapesAsEncodingJSON for any string content.
// Seeds are in testdata/fuzz/FuzzStringFidelity.
func FuzzStringFidelity(f *testing.F) {
	for _, s := range escapeCases {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		// Raw control characters are accepted and stored escaped, where
		// encoding/json refuses them: FuzzParseBatch covers them.
		if len(s) > 1024 || strings.ContainsFunc(s, isASCIIControl) {
			return
		}
		checkEscapeFidelity(t, s)
	})
}

func checkEscapeFidelity(t *testing.T, s string) {
	t.Helper()
	pp := newParser(DefaultConfig(), newKeyring(nil), nil)
	in := newIngest()
	single := `{"type":"track","userId":"u","event":"[` + s + `]","properties":{"k` + s + `":1}}`
	for _, tc := range []struct {
		ep   endpoint
		body string
	}{{epTrack, single}, {epBatch, `{"batch":[` + single + `]}`}} {
		var want struct {
			Event      string
			Properties map[string]int
		}
		switch {
		case !utf8.ValidString(tc.body):
			// encoding/json reads it with U+FFFD; spillway refuses what
			// it could not store as sent.
		case tc.ep == epTrack:
			if json.Unmarshal([]byte(tc.body), &want) != nil {
				want.Event = ""
			}
		default:
			var batch struct{ Batch []json.RawMessage }
			if json.Unmarshal([]byte(tc.body), &batch) == nil && len(batch.Batch) == 1 {
				_ = json.Unmarshal(batch.Batch[0], &want)
			}
		}
		err := pp.parse(in, tc.ep, []byte(tc.body), []byte("k"), fixedNow)
		if want.Event == "" {
			if err == nil {
				t.Fatalf("%s %q: accepted a body encoding/json refuses", tc.ep, tc.body)
			}
			if status, _ := statusFor(err); status != 400 {
				t.Fatalf("%s %q: refused with %d (%v), want 400", tc.ep, tc.body, status, err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%s %q: %v; encoding/json reads it", tc.ep, tc.body, err)
		}
		if len(in.events) != 1 {
			t.Fatalf("%s %q: %d events stored", tc.ep, tc.body, len(in.events))
		}
		var got struct {
			Event      string
			Properties map[string]int
		}
		if err := json.Unmarshal(in.events[0].Data, &got); err != nil {
			t.Fatalf("%s: stored %q: %v", tc.ep, in.events[0].Data, err)
		}
		if got.Event != want.Event {
			t.Errorf("%s %q: event stored as %q, want %q", tc.ep, s, got.Event, want.Event)
		}
		for k := range want.Properties {
			if _, ok := got.Properties[k]; !ok || len(got.Properties) != 1 {
				t.Errorf("%s %q: properties stored as %v, want key %q", tc.ep, s, got.Properties, k)
			}
		}
	}
}

func isASCIIControl(r rune) bool { return r < 0x20 }
