package proxy

import (
	"encoding/json"
	"net/http"
	"regexp"
	"slices"
	"testing"
)

// parseOK runs the request parser alone, as the handler would, and fails
// the test unless the request is accepted.
func parseOK(t *testing.T, ep endpoint, body string) *ingest {
	t.Helper()
	pp := newParser(DefaultConfig(), newKeyring(nil), nil)
	in := newIngest()
	if err := pp.parse(in, ep, []byte(body), nil, fixedNow); err != nil {
		t.Fatalf("parse: %v", err)
	}
	return in
}

func TestStoredEventLayout(t *testing.T) {
	tests := []struct {
		scenario string
		ep       endpoint
		body     string
		want     string
	}{
		{
			scenario: "the device clock is corrected by the batch's sentAt and its timestamp kept as originalTimestamp",
			ep:       epBatch,
			body: `{"sentAt":"2024-05-01T11:00:10.000Z","writeKey":"k","batch":[` +
				`{"type":"track","userId":"u1","event":"E","messageId":"m1","timestamp":"2024-05-01T11:00:00.000Z"}]}`,
			// receivedAt - (sentAt - timestamp) = 12:00:00 - 10s
			want: `{"type":"track","userId":"u1","event":"E","messageId":"m1",` +
				`"originalTimestamp":"2024-05-01T11:00:00.000Z","timestamp":"2024-05-01T11:59:50.000Z",` +
				`"receivedAt":"2024-05-01T12:00:00.000Z"}`,
		},
		{
			scenario: "zone offsets and fractions are honoured in the correction",
			ep:       epTrack,
			body: `{"userId":"u1","event":"E","messageId":"m1","timestamp":"2024-05-01T13:00:00.250+02:00",` +
				`"sentAt":"2024-05-01T11:00:01Z"}`,
			want: `{"userId":"u1","event":"E","messageId":"m1","type":"track",` +
				`"originalTimestamp":"2024-05-01T13:00:00.250+02:00","timestamp":"2024-05-01T11:59:59.250Z",` +
				`"receivedAt":"2024-05-01T12:00:00.000Z"}`,
		},
		{
			scenario: "without sentAt the device's timestamp is kept, in UTC",
			ep:       epTrack,
			body:     `{"userId":"u1","event":"E","messageId":"m1","timestamp":"2024-05-01T13:00:00.250+02:00"}`,
			want: `{"userId":"u1","event":"E","messageId":"m1","type":"track",` +
				`"originalTimestamp":"2024-05-01T13:00:00.250+02:00","timestamp":"2024-05-01T11:00:00.250Z",` +
				`"receivedAt":"2024-05-01T12:00:00.000Z"}`,
		},
		{
			scenario: "a naive timestamp is read as UTC",
			ep:       epTrack,
			body:     `{"userId":"u1","event":"E","messageId":"m1","timestamp":"2024-05-01T11:00:00.123456","sentAt":"2024-05-01T11:00:00.123456"}`,
			want: `{"userId":"u1","event":"E","messageId":"m1","type":"track",` +
				`"originalTimestamp":"2024-05-01T11:00:00.123456","timestamp":"2024-05-01T12:00:00.000Z",` +
				`"receivedAt":"2024-05-01T12:00:00.000Z"}`,
		},
		{
			scenario: "without a timestamp the event is timed at receipt",
			ep:       epIdentify,
			body:     `{"userId":"u1","messageId":"m1","sentAt":"2024-05-01T11:00:10.000Z"}`,
			want: `{"userId":"u1","messageId":"m1","type":"identify",` +
				`"timestamp":"2024-05-01T12:00:00.000Z","receivedAt":"2024-05-01T12:00:00.000Z"}`,
		},
		{
			scenario: "an unreadable timestamp is timed at receipt and kept as originalTimestamp",
			ep:       epTrack,
			body:     `{"userId":"u1","event":"E","messageId":"m1","timestamp":"yesterday"}`,
			want: `{"userId":"u1","event":"E","messageId":"m1","type":"track",` +
				`"originalTimestamp":"yesterday","timestamp":"2024-05-01T12:00:00.000Z","receivedAt":"2024-05-01T12:00:00.000Z"}`,
		},
		{
			scenario: "an event's own sentAt wins over the batch's",
			ep:       epBatch,
			body: `{"sentAt":"2024-05-01T11:00:10Z","batch":[{"type":"page","anonymousId":"a","messageId":"m1",` +
				`"timestamp":"2024-05-01T11:00:00Z","sentAt":"2024-05-01T11:00:01Z"}]}`,
			want: `{"type":"page","anonymousId":"a","messageId":"m1",` +
				`"originalTimestamp":"2024-05-01T11:00:00Z","timestamp":"2024-05-01T11:59:59.000Z","receivedAt":"2024-05-01T12:00:00.000Z"}`,
		},
		{
			scenario: "an originalTimestamp set upstream is kept and not overwritten",
			ep:       epTrack,
			body: `{"userId":"u1","event":"E","messageId":"m1","originalTimestamp":"2020-01-01T00:00:00Z",` +
				`"timestamp":"2024-05-01T11:00:00Z","sentAt":"2024-05-01T11:00:00Z","receivedAt":"2024-05-01T11:00:05Z"}`,
			want: `{"userId":"u1","event":"E","messageId":"m1","originalTimestamp":"2020-01-01T00:00:00Z","type":"track",` +
				`"timestamp":"2024-05-01T12:00:00.000Z","receivedAt":"2024-05-01T12:00:00.000Z"}`,
		},
		{
			scenario: "batch-level context and integrations go to events that lack them and merge into those that have them",
			ep:       epBatch,
			body: `{"context":{"library":{"name":"analytics-node"},"ip":"1.2.3.4"},"integrations":{"All":false,"Amplitude":true},"batch":[` +
				`{"type":"track","userId":"u","event":"A","messageId":"m1"},` +
				`{"type":"track","userId":"u","event":"B","messageId":"m2","context":{"ip":"5.6.7.8","page":{"path":"/"}},"integrations":{"Amplitude":false}}]}`,
			want: `{"type":"track","userId":"u","event":"A","messageId":"m1",` +
				`"context":{"library":{"name":"analytics-node"},"ip":"1.2.3.4"},"integrations":{"All":false,"Amplitude":true},` +
				`"timestamp":"2024-05-01T12:00:00.000Z","receivedAt":"2024-05-01T12:00:00.000Z"}` +
				`{"type":"track","userId":"u","event":"B","messageId":"m2",` +
				`"context":{"ip":"5.6.7.8","page":{"path":"/"},"library":{"name":"analytics-node"}},"integrations":{"Amplitude":false,"All":false},` +
				`"timestamp":"2024-05-01T12:00:00.000Z","receivedAt":"2024-05-01T12:00:00.000Z"}`,
		},
		{
			scenario: "writeKey and sentAt never reach the spool, even duplicated",
			ep:       epTrack,
			body:     `{"writeKey":"secret","userId":"u1","event":"E","messageId":"m1","writeKey":"secret2","sentAt":"x","sentAt":"y"}`,
			want: `{"userId":"u1","event":"E","messageId":"m1","type":"track",` +
				`"timestamp":"2024-05-01T12:00:00.000Z","receivedAt":"2024-05-01T12:00:00.000Z"}`,
		},
		{
			scenario: "strings are re-escaped as strict JSON and numbers kept digit for digit",
			ep:       epTrack,
			body: `{"userId":"u\u0001\"\\\t\u2028😀","event":"E","messageId":"m1",` +
				`"properties":{"big":123456789012345678901234567890,"f":-1.5e-7,"esc\u00e9":"\ud83d\ude00","a":[true,false,null,{}]}}`,
			want: `{"userId":"u\u0001\"\\\t` + "\u2028😀" + `","event":"E","messageId":"m1",` +
				`"properties":{"big":123456789012345678901234567890,"f":-1.5e-7,"esc` + "é" + `":"😀","a":[true,false,null,{}]},` +
				`"type":"track","timestamp":"2024-05-01T12:00:00.000Z","receivedAt":"2024-05-01T12:00:00.000Z"}`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.scenario, func(t *testing.T) {
			in := parseOK(t, tt.ep, tt.body)
			var got []byte
			for _, e := range in.events {
				got = append(got, e.Data...)
			}
			if len(in.dead) != 0 {
				t.Fatalf("dead letters: %+v", in.dead)
			}
			if string(got) != tt.want {
				t.Errorf("stored\n%s\nwant\n%s", got, tt.want)
			}
		})
	}
}

var uuidV4 = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

func TestMessageID(t *testing.T) {
	t.Run("a missing, null or empty messageId is replaced by a unique random one", func(t *testing.T) {
		in := parseOK(t, epBatch, `{"batch":[`+
			`{"type":"track","userId":"u","event":"a"},`+
			`{"type":"track","userId":"u","event":"b","messageId":null},`+
			`{"type":"track","userId":"u","event":"c","messageId":""}]}`)
		seen := map[string]bool{}
		for i, e := range in.events {
			var ev map[string]any
			if err := json.Unmarshal(e.Data, &ev); err != nil {
				t.Fatal(err)
			}
			id, _ := ev["messageId"].(string)
			if !uuidV4.MatchString(id) {
				t.Errorf("event %d messageId = %q, want a v4 UUID", i, id)
			}
			if seen[id] {
				t.Errorf("messageId %q given twice", id)
			}
			seen[id] = true
		}
	})
	t.Run("messageIds are unique across many requests", func(t *testing.T) {
		pp := newParser(DefaultConfig(), newKeyring(nil), nil)
		in := newIngest()
		seen := map[string]bool{}
		for range 200 {
			if err := pp.parse(in, epBatch, []byte(`{"batch":[{"type":"page","userId":"u"},{"type":"page","userId":"u"},{"type":"page","userId":"u"}]}`), nil, fixedNow); err != nil {
				t.Fatal(err)
			}
			for _, e := range in.events {
				var ev struct{ MessageID string }
				_ = json.Unmarshal(e.Data, &ev)
				if seen[ev.MessageID] {
					t.Fatalf("messageId %q given twice", ev.MessageID)
				}
				seen[ev.MessageID] = true
			}
		}
	})
	t.Run("a messageId sent by the SDK is kept, so duplicates can be removed downstream", func(t *testing.T) {
		in := parseOK(t, epTrack, `{"userId":"u","event":"a","messageId":"ajs-1"}`)
		var ev struct{ MessageID string }
		_ = json.Unmarshal(in.events[0].Data, &ev)
		if ev.MessageID != "ajs-1" {
			t.Errorf("messageId = %q, want ajs-1", ev.MessageID)
		}
	})
	t.Run("only a messageId the client sent is handed to the spool as the de-duplication key", func(t *testing.T) {
		for _, body := range []string{
			// The fast path takes the first; the tree parser the second.
			`{"batch":[{"type":"track","userId":"u","event":"a","messageId":"m-1"},{"type":"track","userId":"u","event":"b"},{"type":"track","userId":"u","event":"c","messageId":"m\u002d3"}]}`,
			`{"batch":[ {"type":"track","userId":"u","event":"a","messageId":"m-1"},{"type":"track","userId":"u","event":"b","messageId":""},{"type":"track","userId":"u","event":"c","messageId":"m-3"}]}`,
		} {
			in := parseOK(t, epBatch, body)
			var got []string
			for _, e := range in.events {
				got = append(got, string(e.MessageID))
			}
			if want := []string{"m-1", "", "m-3"}; !slices.Equal(got, want) {
				t.Errorf("MessageIDs %q, want %q (body %s)", got, want, body)
			}
		}
	})
}

func TestEnrichmentOverHTTP(t *testing.T) {
	h := newHarness(t, DefaultConfig())
	a := h.post(t, "/v1/batch", `{"sentAt":"2024-05-01T11:00:10.000Z","context":{"library":{"name":"analytics-go"}},"batch":[`+
		`{"type":"track","userId":"u","event":"E","timestamp":"2024-05-01T11:00:00.000Z"}]}`, basicAuth("k"))
	wantAnswer(t, a, http.StatusOK, "success.json")
	ev := decode(t, h.sp.onlyCall(t).events[0].Data)
	want := map[string]any{
		"timestamp":         "2024-05-01T11:59:50.000Z",
		"originalTimestamp": "2024-05-01T11:00:00.000Z",
		"receivedAt":        "2024-05-01T12:00:00.000Z",
		"context":           map[string]any{"library": map[string]any{"name": "analytics-go"}},
	}
	for k, v := range want {
		if got, _ := json.Marshal(ev[k]); string(got) != mustJSON(v) {
			t.Errorf("%s = %s, want %s", k, got, mustJSON(v))
		}
	}
	for _, k := range []string{"sentAt", "writeKey"} {
		if _, ok := ev[k]; ok {
			t.Errorf("stored event has %s", k)
		}
	}
	if id, _ := ev["messageId"].(string); !uuidV4.MatchString(id) {
		t.Errorf("messageId = %q", id)
	}
}

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return string(b)
}
