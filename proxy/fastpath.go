package proxy

import (
	"bytes"
	"time"

	"github.com/valyala/fastjson"

	"github.com/spillwayhq/spillway/internal/jsontext"
	"github.com/spillwayhq/spillway/internal/segment"
)

// The fast path. Nearly every request is an SDK's output, whose events are
// already in the form spillway stores them: no whitespace, no repeated
// keys, no escapes but those appendString writes. For such a request one
// pass over the body checks it and copies it into the stored events, where
// the tree parser builds fastjson's tree and writes every value back out
// (a third of spillway's CPU at full load). Whatever the fast path does not
// take as it is (an error of any kind, another escape, a repeated key, a
// timestamp that is an object or array, batch-level context or
// integrations, deep nesting) it declines, and the tree parser handles the
// request from scratch. So every stored byte and every answer is the tree
// parser's; FuzzFastPathAgrees holds the two to that.

// parseFast is parse for the requests the fast path takes; false: declined,
// with in as it was.
func (pp *parser) parseFast(in *ingest, ep endpoint, body, headerKey []byte, now time.Time) bool {
	rndPos := in.rndPos
	s := fastScan{b: body, keys: in.fastKeys[:0], junk: in.fastJunk[:0]}
	ok := pp.parseFastInto(&s, in, ep, headerKey, now)
	in.fastKeys, in.fastJunk = s.keys[:0], s.junk[:0]
	if ok {
		return true
	}
	in.reset()
	in.rndPos = rndPos // the same messageIds as if the fast path had not run
	return false
}

func (pp *parser) parseFastInto(s *fastScan, in *ingest, ep endpoint, headerKey []byte, now time.Time) bool {
	bt := batchTop{key: headerKey, now: now}
	in.scratch = segment.AppendTime(in.scratch, now)
	bt.nowText = in.scratch
	var keys keyMemo
	s.ws()
	if ep.single() {
		if !pp.fastEvent(s, in, ep, &keys, &bt, 0) {
			return false
		}
		s.ws()
		in.sliceEvents()
		return s.i == len(s.b)
	}
	batchStart, batchEnd, ok := fastBatchTop(s, &bt)
	if !ok {
		return false
	}
	s.i = batchStart + 1
	s.ws()
	for n := 0; ; n++ {
		if n == pp.maxBatch || !pp.fastEvent(s, in, epBatch, &keys, &bt, n) {
			return false
		}
		more, ok := s.next(']', false)
		if !ok {
			return false
		}
		if !more {
			break
		}
	}
	if s.i != batchEnd {
		return false
	}
	in.sliceEvents()
	return true
}

// fastBatchTop reads the fields of a batch body but its events, and finds
// the batch array's brackets.
func fastBatchTop(s *fastScan, bt *batchTop) (batchStart, batchEnd int, ok bool) {
	batchStart = -1
	ok = s.fields(func(k []byte) bool {
		switch string(k) {
		case segment.FieldBatch:
			if s.b[s.i] != '[' {
				return false
			}
			batchStart = s.i
			var ok bool
			if batchEnd, ok = batchEndFromTail(s.b); !ok || batchEnd <= batchStart {
				batchEnd, ok = jsontext.ValueEnd(s.b, s.i)
			}
			s.i = batchEnd
			return ok
		case segment.FieldWriteKey:
			sc, esc, ok := s.discard()
			if sc.t == fastjson.TypeString && len(sc.s) > 0 {
				bt.key = sc.s
			}
			return ok && !esc
		case segment.FieldSentAt:
			sc, esc, ok := s.discard()
			bt.sentAt, bt.hasSentAt = parseTime(sc)
			return ok && !esc
		case segment.FieldContext, segment.FieldIntegrations:
			if s.b[s.i] == '{' {
				return false // merged into each event: the tree parser's work
			}
		}
		_, _, ok := s.discard()
		return ok
	})
	if !ok || batchStart < 0 {
		return 0, 0, false
	}
	s.ws()
	return batchStart, batchEnd, s.i == len(s.b)
}

// fastEvent writes the event object at s.i to in.out as writeEvent would,
// and files it as addEvent does.
func (pp *parser) fastEvent(s *fastScan, in *ingest, ep endpoint, keys *keyMemo, bt *batchTop, n int) bool {
	var f fields
	start := len(in.out)
	s.out = append(in.out, '{')
	first := true
	ok := s.fields(func(k []byte) bool {
		// The field is written as it comes, and cut again if it is not
		// stored.
		mark, wasFirst := len(s.out), first
		if !first {
			s.out = append(s.out, ',')
		}
		first = false
		// The key has no escapes, and the fast path takes no control
		// characters: appendString would write it as it is.
		s.out = append(append(append(s.out, '"'), k...), '"', ':')
		valueIn, valueOut := s.i, len(s.out)
		sc, esc, ok := s.fieldValue()
		if !ok {
			return false
		}
		if esc {
			switch string(k) {
			case segment.FieldWriteKey, segment.FieldSentAt, segment.FieldTimestamp, segment.FieldType, segment.FieldMessageID:
				// Read unescaped (a messageId is the de-duplication
				// key): of the others only non-empty lengths are, the
				// same escaped.
				return false
			}
		}
		keep := f.take(string(k), sc)
		if keep && sc.t == fastjson.TypeObject && string(k) == segment.FieldContext {
			f.contextAt, f.contextEnd = valueOut, len(s.out)
		}
		if !keep && string(k) == segment.FieldTimestamp {
			if sc.t == fastjson.TypeObject || sc.t == fastjson.TypeArray {
				return false // stored as read only if it has no whitespace to drop
			}
			f.timestampJSON = s.b[valueIn:s.i]
		}
		if !keep {
			s.out, first = s.out[:mark], wasFirst
		}
		return true
	})
	if !ok {
		in.out = s.out
		return false
	}
	size := len(s.out) - start + 1
	in.out = in.appendEnrichment(s.out, first, ep, &f, bt)
	return pp.addEvent(in, ep, keys, bt, n, start, size, &f, true) == nil
}

// batchEndFromTail finds the end of the batch array from the end of the
// body, where SDKs put the fields that follow it: a few strings such as
// sentAt. Reading the body twice forwards would cost a fifth of the fast
// path. An end found wrongly is harmless: the events must then end there,
// and the body's fields follow, or the fast path declines.
func batchEndFromTail(b []byte) (int, bool) {
	i := len(b) - 1
	back := func() {
		for i >= 0 && (b[i] == ' ' || b[i] == '\n' || b[i] == '\t' || b[i] == '\r') {
			i--
		}
	}
	// str moves before the string ending at i, if it has no escapes.
	str := func() bool {
		if i < 0 || b[i] != '"' {
			return false
		}
		j := bytes.LastIndexByte(b[:i], '"')
		if j < 0 || bytes.IndexByte(b[j:i], '\\') >= 0 {
			return false
		}
		i = j - 1
		return true
	}
	// expect moves before c, the first byte before i but whitespace.
	expect := func(c byte) bool {
		back()
		if i < 0 || b[i] != c {
			return false
		}
		i--
		return true
	}
	if !expect('}') {
		return 0, false
	}
	for range 8 {
		back()
		if i >= 0 && b[i] == ']' {
			return i + 1, true
		}
		if !str() || !expect(':') {
			return 0, false
		}
		back()
		if !str() || !expect(',') {
			return 0, false
		}
	}
	return 0, false
}
