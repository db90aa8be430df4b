package forwarders

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/spillwayhq/spillway/spool"
)

func recs(data ...string) []spool.Record {
	out := make([]spool.Record, len(data))
	for i, d := range data {
		out[i] = spool.Record{Seq: uint64(i), Data: []byte(d)}
	}
	return out
}

func TestEncodeBody(t *testing.T) {
	now := time.Date(2025, 6, 1, 12, 30, 0, 123456789, time.FixedZone("CEST", 2*3600))
	tests := []struct {
		scenario string
		format   string
		in       []spool.Record
		want     string
	}{
		{"a JSON array of events", FormatJSON, recs(`{"a":1}`, `{"b":2}`), `[{"a":1},{"b":2}]`},
		{"one event per line", FormatNDJSON, recs(`{"a":1}`, `{"b":2}`), "{\"a\":1}\n{\"b\":2}\n"},
		{"a pretty-printed event is compacted onto its line", FormatNDJSON, recs("{\n  \"a\": 1\n}"), "{\"a\":1}\n"},
		{"a Segment batch with sentAt in UTC milliseconds", FormatSegment, recs(`{"a":1}`, `{"b":2}`),
			`{"batch":[{"a":1},{"b":2}],"sentAt":"2025-06-01T10:30:00.123Z"}`},
		{"an empty batch is still valid JSON", FormatJSON, nil, `[]`},
	}
	for _, tt := range tests {
		t.Run(tt.scenario, func(t *testing.T) {
			got := encodeBody(nil, tt.format, tt.in, now)
			if string(got) != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
			guess := map[string]int{FormatJSON: jsonArraySize(tt.in), FormatSegment: segmentBatchSize(tt.in)}
			if g, ok := guess[tt.format]; ok && g != len(got) {
				t.Errorf("size guess %d for a body of %d", g, len(got))
			}
		})
	}
}

func TestGzipSegmentBatchRoundTrips(t *testing.T) {
	now := time.Date(2025, 6, 1, 10, 30, 0, 0, time.UTC)
	in := recs(`{"type":"track","event":"A"}`, `{"type":"identify"}`)
	z, err := gzipSegmentBatch(nil, in, now)
	if err != nil {
		t.Fatal(err)
	}
	zr, err := gzip.NewReader(bytes.NewReader(z))
	if err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	var body struct {
		Batch  []json.RawMessage `json:"batch"`
		SentAt string            `json:"sentAt"`
	}
	if err := json.Unmarshal(raw, &body); err != nil {
		t.Fatalf("%v in %s", err, raw)
	}
	if len(body.Batch) != 2 || body.SentAt != "2025-06-01T10:30:00.000Z" {
		t.Errorf("got %s", raw)
	}
}

func benchBatch(n int) []spool.Record {
	out := make([]spool.Record, n)
	for i := range out {
		out[i] = spool.Record{Seq: uint64(i), WriteKey: "wk", Data: []byte(fmt.Sprintf(
			`{"type":"track","event":"Order Completed","userId":"user-%d","messageId":"msg-%08d",`+
				`"properties":{"revenue":%d.99,"currency":"EUR","items":[{"sku":"A-%d","qty":2}]},`+
				`"context":{"library":{"name":"analytics-node","version":"6.0.0"},"ip":"10.0.0.%d"},`+
				`"timestamp":"2025-06-01T10:30:00.000Z"}`, i%97, i, i%500, i%13, i%250))}
	}
	return out
}

func BenchmarkEncodeBatch(b *testing.B) {
	batch := benchBatch(500)
	size := jsonArraySize(batch)
	now := time.Now()
	for _, format := range []string{FormatJSON, FormatNDJSON, FormatSegment} {
		b.Run("format="+format, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(size))
			var buf []byte // recycled, as a delivery's body is
			for b.Loop() {
				buf = encodeBody(buf[:0], format, batch, now)
			}
		})
	}
	b.Run("format=segment+gzip", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(size))
		var buf []byte
		for b.Loop() {
			var err error
			if buf, err = gzipSegmentBatch(buf[:0], batch, now); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// net/http may read a body after Do returns: the buffer must outlive the
// sender's release until every reader is closed, and a reader closed twice
// must not release it twice.
func TestRequestBodyIsHeldUntilEveryReaderIsClosed(t *testing.T) {
	b := newRequestBody()
	b.buf = append(b.buf, "payload"...)
	r1 := b.reader()
	r2 := b.reader() // a retry through GetBody
	b.release()      // post returned
	if got := b.refs.Load(); got != 2 {
		t.Fatalf("refs after the sender let go = %d, want 2", got)
	}
	_ = r1.Close()
	_ = r1.Close()
	if got := b.refs.Load(); got != 1 {
		t.Fatalf("refs after one reader closed twice = %d, want 1", got)
	}
	if data, _ := io.ReadAll(r2); string(data) != "payload" {
		t.Fatalf("the open reader read %q", data)
	}
	_ = r2.Close()
	if got := b.refs.Load(); got != 0 {
		t.Fatalf("refs after every reader closed = %d, want 0", got)
	}
}
