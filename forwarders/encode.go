package forwarders

import (
	"bytes"
	"encoding/json"
	"slices"
	"sync"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/spillwayhq/spillway/internal/segment"
	"github.com/spillwayhq/spillway/spool"
)

// Request bodies are allocated at their exact size, once per request, and
// never pooled: net/http may still read a request body after Do returns
// (http.RoundTripper's contract), so a pooled body could be overwritten
// while it is being sent. Only the scratch space of gzip is pooled.

// jsonArraySize is the exact length of appendJSONArray's output.
func jsonArraySize(recs []spool.Record) int {
	n := 2 + max(len(recs)-1, 0)
	for i := range recs {
		n += len(recs[i].Data)
	}
	return n
}

// appendJSONArray appends [e1,e2,...].
func appendJSONArray(dst []byte, recs []spool.Record) []byte {
	dst = append(dst, '[')
	for i := range recs {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, recs[i].Data...)
	}
	return append(dst, ']')
}

// appendSegmentBatch appends {"batch":[...],"sentAt":"..."}. sentAt is the
// time of sending, never the device's, so that the upstream's own clock-skew
// correction stays right however long the events waited in the spool.
func appendSegmentBatch(dst []byte, recs []spool.Record, sentAt time.Time) []byte {
	dst = append(dst, `{"batch":[`...)
	for i := range recs {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, recs[i].Data...)
	}
	dst = append(dst, `],"sentAt":"`...)
	// Formatting straight into dst may grow it past the exact size.
	var tb [32]byte
	dst = append(dst, sentAt.UTC().AppendFormat(tb[:0], segment.TimeLayout)...)
	return append(dst, `"}`...)
}

func segmentBatchSize(recs []spool.Record) int {
	return len(`{"batch":`) + jsonArraySize(recs) + len(`,"sentAt":""}`) + len(segment.TimeLayout)
}

// ndjsonSize is an upper bound of appendNDJSON's output.
func ndjsonSize(recs []spool.Record) int {
	n := len(recs)
	for i := range recs {
		n += len(recs[i].Data)
	}
	return n
}

// appendNDJSON appends one event per line. An event stored pretty-printed
// is compacted, since a raw newline inside it would split it in two lines.
func appendNDJSON(dst []byte, recs []spool.Record) []byte {
	for i := range recs {
		dst = appendLine(dst, recs[i].Data)
	}
	return dst
}

func appendLine(dst, data []byte) []byte {
	if bytes.IndexByte(data, '\n') < 0 && bytes.IndexByte(data, '\r') < 0 {
		return append(append(dst, data...), '\n')
	}
	b := bytes.NewBuffer(dst)
	if err := json.Compact(b, data); err != nil {
		// Not JSON: keep it on one line anyway; the destination will judge.
		b.Truncate(len(dst))
		for _, c := range data {
			if c != '\n' && c != '\r' {
				b.WriteByte(c)
			}
		}
	}
	b.WriteByte('\n')
	return b.Bytes()
}

// encodeBody appends the body of one request in the given format to dst.
func encodeBody(dst []byte, format string, recs []spool.Record, now time.Time) []byte {
	switch format {
	case FormatNDJSON:
		return appendNDJSON(slices.Grow(dst, ndjsonSize(recs)), recs)
	case FormatSegment:
		return appendSegmentBatch(slices.Grow(dst, segmentBatchSize(recs)), recs, now)
	default:
		return appendJSONArray(slices.Grow(dst, jsonArraySize(recs)), recs)
	}
}

type gzipScratch struct {
	raw []byte // the uncompressed body
	out bytes.Buffer
	zw  *gzip.Writer
}

var gzipPool = sync.Pool{New: func() any {
	s := &gzipScratch{}
	// BestSpeed: on a 2-core sidecar CPU is scarcer than upstream bytes,
	// and event JSON still shrinks several times at level 1.
	s.zw, _ = gzip.NewWriterLevel(&s.out, gzip.BestSpeed)
	return s
}}

// gzipSegmentBatch appends a gzipped {"batch":[...],"sentAt":"..."} body
// to dst.
func gzipSegmentBatch(dst []byte, recs []spool.Record, now time.Time) ([]byte, error) {
	s := gzipPool.Get().(*gzipScratch)
	defer gzipPool.Put(s)
	s.raw = appendSegmentBatch(s.raw[:0], recs, now)
	s.out.Reset()
	s.zw.Reset(&s.out)
	if _, err := s.zw.Write(s.raw); err != nil {
		return nil, err
	}
	if err := s.zw.Close(); err != nil {
		return nil, err
	}
	body := append(dst, s.out.Bytes()...)
	if cap(s.raw) > 4*DefaultBatchBytes {
		// Do not pin one outsized batch's memory in the pool.
		s.raw, s.out = nil, bytes.Buffer{}
	}
	return body, nil
}
