package proxy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"testing"
	"time"
	"unicode/utf8"
)

// FuzzEnrich feeds arbitrary timestamps, sentAts, messageIds and batch and
// event context/integrations to the enrichment step, inside an otherwise
// valid track event, and checks each stored event against the contract
// computed here independently:
//
//   - receivedAt is the server's clock; timestamp is receivedAt -
//     (sentAt - timestamp) when both parse, the device's timestamp when
//     only it parses, receivedAt otherwise, always as RFC 3339 UTC ms;
//   - the device's timestamp is kept as originalTimestamp unless the event
//     has one;
//   - a missing or blank messageId becomes a random UUID, a given one is
//     kept;
//   - batch-level context and integrations are merged into each event, the
//     event's own keys winning, the last of a repeated key winning;
//   - no writeKey or sentAt is stored, no key repeats, numbers survive a
//     strict decoder.
//
// A refusal is allowed only for what a strict decoder refuses, invalid
// UTF-8, or what is nested deeper than fastjson's limit. Seeds are in testdata/fuzz/FuzzEnrich;
// run with go test -run XXX -fuzz FuzzEnrich ./proxy/
func FuzzEnrich(f *testing.F) {
	f.Add("2024-05-01T11:00:00.000Z", "2024-05-01T11:00:10.000Z", "", "m1",
		[]byte(`{"ip":"1.2.3.4","library":{"name":"x"}}`), []byte(`{"ip":"5.6.7.8"}`),
		[]byte(`{"All":false}`), []byte(``), false)
	cfg := DefaultConfig()
	pp := newParser(cfg, newKeyring(nil), nil)
	in := newIngest()

	f.Fuzz(func(t *testing.T, ts, sentAt, eventSentAt, messageID string,
		batchCtx, eventCtx, batchInteg, eventInteg []byte, hasOrigTS bool) {
		body := enrichBody(ts, sentAt, eventSentAt, messageID, batchCtx, eventCtx, batchInteg, eventInteg, hasOrigTS)
		err := pp.parse(in, epBatch, body, nil, fixedNow)
		if err != nil {
			if status, _ := statusFor(err); status != http.StatusBadRequest {
				t.Fatalf("refused with %d: %v", status, err)
			}
			// encoding/json takes invalid UTF-8 in strings (as U+FFFD); we
			// refuse it, by choice (see TestHostileBodies).
			if strictDecoderRefuses(body) || !utf8.Valid(body) || nestedDeeperThan(body, 300) || len(body) > cfg.MaxEventBytes {
				return
			}
			t.Fatalf("refused a body a strict decoder takes: %v\n%s", err, body)
		}
		if len(in.events) != 1 || len(in.dead) != 0 {
			t.Fatalf("%d events, %d dead letters; want one valid event\n%s", len(in.events), len(in.dead), body)
		}
		data := in.events[0].Data
		checkStored(t, data, true)
		var got map[string]any
		dec := json.NewDecoder(bytes.NewReader(data))
		dec.UseNumber()
		if err := dec.Decode(&got); err != nil {
			t.Fatal(err)
		}
		var sent map[string]any
		dec = json.NewDecoder(bytes.NewReader(body))
		dec.UseNumber()
		if err := dec.Decode(&sent); err != nil {
			t.Fatalf("fastjson took a body encoding/json refuses: %v\n%s", err, body)
		}
		ev := sent["batch"].([]any)[0].(map[string]any)

		if got["receivedAt"] != "2024-05-01T12:00:00.000Z" {
			t.Errorf("receivedAt = %v", got["receivedAt"])
		}
		if want := wantTimestamp(ev, sent); got["timestamp"] != want {
			t.Errorf("timestamp = %v, want %v (timestamp %q, sentAt %q, event sentAt %q)", got["timestamp"], want, ts, sentAt, eventSentAt)
		}
		if hasOrigTS {
			if !reflect.DeepEqual(got["originalTimestamp"], ev["originalTimestamp"]) {
				t.Errorf("originalTimestamp = %v, want the event's own %v", got["originalTimestamp"], ev["originalTimestamp"])
			}
		} else if !reflect.DeepEqual(got["originalTimestamp"], ev["timestamp"]) {
			t.Errorf("originalTimestamp = %v, want the device's timestamp %v", got["originalTimestamp"], ev["timestamp"])
		}
		if id, _ := ev["messageId"].(string); id != "" {
			if got["messageId"] != id {
				t.Errorf("messageId = %v, want %q kept", got["messageId"], id)
			}
		} else if s, _ := got["messageId"].(string); !uuidV4.MatchString(s) {
			t.Errorf("messageId = %v, want a random UUID", got["messageId"])
		}
		for _, k := range []string{"context", "integrations"} {
			if want, ok := wantMerged(ev, sent, k); !ok {
				if _, has := got[k]; has {
					t.Errorf("%s = %v, want none", k, got[k])
				}
			} else if !reflect.DeepEqual(got[k], want) {
				t.Errorf("%s = %v, want %v", k, got[k], want)
			}
		}
	})
}

// enrichBody builds a batch of one track event. Strings are JSON-encoded;
// raw JSON that is empty or invalid leaves its field out.
func enrichBody(ts, sentAt, eventSentAt, messageID string, batchCtx, eventCtx, batchInteg, eventInteg []byte, hasOrigTS bool) []byte {
	var b bytes.Buffer
	field := func(k string, raw []byte) {
		if len(raw) > 0 && json.Valid(raw) {
			fmt.Fprintf(&b, `,%q:%s`, k, raw)
		}
	}
	str := func(k, v string) {
		if v != "" {
			q, _ := json.Marshal(v)
			fmt.Fprintf(&b, `,%q:%s`, k, q)
		}
	}
	b.WriteString(`{"batch":[{"type":"track","userId":"u","event":"e"`)
	str("timestamp", ts)
	str("sentAt", eventSentAt)
	str("messageId", messageID)
	if hasOrigTS {
		b.WriteString(`,"originalTimestamp":"2020-01-01T00:00:00Z"`)
	}
	field("context", eventCtx)
	field("integrations", eventInteg)
	b.WriteString(`}]`)
	str("sentAt", sentAt)
	field("context", batchCtx)
	field("integrations", batchInteg)
	b.WriteString(`}`)
	return b.Bytes()
}

// wantTimestamp is Segment's clock-skew correction, written out again.
func wantTimestamp(ev, batch map[string]any) string {
	now := fixedNow
	parse := func(v any) (time.Time, bool) {
		s, ok := v.(string)
		if !ok {
			return time.Time{}, false
		}
		for _, layout := range []string{time.RFC3339Nano, "2006-01-02T15:04:05.999999999"} {
			if t, err := time.Parse(layout, s); err == nil {
				return t, true
			}
		}
		return time.Time{}, false
	}
	out := now
	if ts, ok := parse(ev["timestamp"]); ok {
		out = ts
		sentAt, hasSentAt := parse(batch["sentAt"])
		if v, has := ev["sentAt"]; has {
			sentAt, hasSentAt = parse(v)
		}
		if hasSentAt {
			out = now.Add(ts.Sub(sentAt))
		}
	}
	return out.UTC().Format("2006-01-02T15:04:05.000Z")
}

// wantMerged is the event's object k with the batch's keys it lacks; ok is
// false when neither has one.
func wantMerged(ev, batch map[string]any, k string) (any, bool) {
	own, hasOwn := ev[k]
	shared, _ := batch[k].(map[string]any)
	switch {
	case !hasOwn && shared == nil:
		return nil, false
	case !hasOwn:
		return shared, true
	}
	ownObj, isObj := own.(map[string]any)
	if !isObj || shared == nil {
		return own, true
	}
	merged := map[string]any{}
	for key, v := range shared {
		merged[key] = v
	}
	for key, v := range ownObj {
		merged[key] = v
	}
	return merged, true
}

// strictDecoderRefuses reports whether encoding/json, as Segment's API
// decodes, refuses body: invalid JSON or a number out of float64's range.
func strictDecoderRefuses(body []byte) bool {
	var v any
	return json.Unmarshal(body, &v) != nil
}

// nestedDeeperThan reports whether body nests arrays and objects deeper
// than limit.
func nestedDeeperThan(body []byte, limit int) bool {
	dec := json.NewDecoder(bytes.NewReader(body))
	depth := 0
	for {
		tok, err := dec.Token()
		if err != nil {
			return false
		}
		switch tok {
		case json.Delim('{'), json.Delim('['):
			if depth++; depth > limit {
				return true
			}
		case json.Delim('}'), json.Delim(']'):
			depth--
		}
	}
}

// checkUniqueKeys fails the test if any object of data repeats a key.
func checkUniqueKeys(t *testing.T, data []byte) {
	t.Helper()
	if k, err := repeatedKey(data); err != nil {
		t.Fatalf("stored event does not decode: %v", err)
	} else if k != "" {
		t.Fatalf("stored event repeats key %q: %s", k, data)
	}
}

// repeatedKey returns a key that some object of data repeats, or "".
func repeatedKey(data []byte) (string, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	type frame struct {
		keys    map[string]bool // nil for an array
		wantKey bool
	}
	var stack []*frame
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			return "", nil
		}
		if err != nil {
			return "", err
		}
		var top *frame
		if len(stack) > 0 {
			top = stack[len(stack)-1]
		}
		if d, ok := tok.(json.Delim); ok && (d == '}' || d == ']') {
			stack = stack[:len(stack)-1]
			continue
		}
		if top != nil && top.keys != nil {
			if top.wantKey {
				k := tok.(string)
				if top.keys[k] {
					return k, nil
				}
				top.keys[k] = true
				top.wantKey = false
				continue
			}
			top.wantKey = true // this token starts the value
		}
		switch tok {
		case json.Delim('{'):
			stack = append(stack, &frame{keys: map[string]bool{}, wantKey: true})
		case json.Delim('['):
			stack = append(stack, &frame{})
		}
	}
}

func TestRepeatedKey(t *testing.T) {
	// The checker itself must see repeats at any depth and accept the
	// same key in sibling and nested objects.
	for _, s := range []string{
		`{"a":1,"b":{"a":2},"c":[{"a":1},{"a":2}],"d":{"e":{"a":1}},"a2":"a"}`,
		`[{"a":{}},{"a":[]}]`, `{"a":"a","b":["a","a"]}`,
	} {
		if k, err := repeatedKey([]byte(s)); k != "" || err != nil {
			t.Errorf("repeatedKey(%s) = %q, %v; want none", s, k, err)
		}
	}
	for s, want := range map[string]string{
		`{"a":1,"a":2}`: "a", `{"x":{"b":1,"b":2}}`: "b", `[{"c":[{"d":1,"d":2}]}]`: "d",
		`{"a":{},"a":[]}`: "a", `{"a":{"b":{}},"c":1,"c":2}`: "c",
	} {
		if k, err := repeatedKey([]byte(s)); k != want || err != nil {
			t.Errorf("repeatedKey(%s) = %q, %v; want %q", s, k, err, want)
		}
	}
}
