package proxy

import (
	"fmt"
	"time"

	"github.com/valyala/fastjson"

	"github.com/spillwayhq/spillway/internal/segment"
)

// The tree parser takes any body: it builds fastjson's tree, checks it is
// strict JSON, and writes every event back out as it is stored. The fast
// path (fastpath.go) declines what it does not take as it is and leaves it
// here.

// parseTree is parse for any body, through fastjson's tree.
func (pp *parser) parseTree(in *ingest, ep endpoint, body, headerKey []byte, now time.Time) error {
	jp, _ := pp.jsonParsers.Get().(*fastjson.Parser)
	if jp == nil {
		jp = new(fastjson.Parser)
	}
	defer pp.jsonParsers.Put(jp)
	v, err := parseObject(jp, body)
	if err != nil {
		return err
	}
	bt := batchTop{key: headerKey, now: now}
	in.scratch = segment.AppendTime(in.scratch, now)
	nowEnd := len(in.scratch)
	var items []*fastjson.Value
	if ep.single() {
		if err := checkNumbers(v, &in.numText); err != nil {
			return badRequest(errInvalidJSON, "event 0: "+err.Error())
		}
		one := [1]*fastjson.Value{v}
		items = one[:]
	} else if items, err = pp.readBatch(in, v, &bt); err != nil {
		return err
	}
	// Appending never rewrites bytes already in a slice, so slices taken
	// before scratch grew still hold the right bytes.
	bt.nowText = in.scratch[:nowEnd]
	return pp.addEvents(in, ep, items, &bt)
}

// parseObject parses body, which must be a JSON object.
func parseObject(jp *fastjson.Parser, body []byte) (*fastjson.Value, error) {
	v, err := jp.ParseBytes(body)
	if err != nil {
		return nil, badRequest(errInvalidJSON, "body is not valid JSON: "+jsonErrorText(err))
	}
	// After the parse, so that every backslash is inside a string.
	if fixed, err := checkEscapes(body); err != nil {
		return nil, badRequest(errInvalidJSON, "body is not valid JSON: "+err.Error())
	} else if &fixed[0] != &body[0] {
		if v, err = jp.ParseBytes(fixed); err != nil {
			return nil, fmt.Errorf("reparse after rewriting surrogate escapes: %w", err)
		}
	}
	if v.Type() != fastjson.TypeObject {
		return nil, badRequest(errInvalidJSON, "body must be a JSON object")
	}
	return v, nil
}

// readBatch reads a batch body's own fields into bt and returns its events.
// Batch-level context and integrations are encoded once, into in.scratch,
// and copied into each event that lacks them.
func (pp *parser) readBatch(in *ingest, body *fastjson.Value, bt *batchTop) ([]*fastjson.Value, error) {
	root, _ := body.Object()
	var items, ctxV, intV *fastjson.Value
	root.Visit(func(k []byte, v *fastjson.Value) {
		switch string(k) {
		case segment.FieldBatch:
			items = v
		case segment.FieldWriteKey:
			if s, err := v.StringBytes(); err == nil && len(s) > 0 {
				bt.key = s
			}
		case segment.FieldSentAt:
			bt.sentAt, bt.hasSentAt = parseTime(scalarOf(v))
		case segment.FieldContext:
			ctxV = v
		case segment.FieldIntegrations:
			intV = v
		}
	})
	arr, err := pp.batchEvents(items)
	if err != nil {
		return nil, err
	}
	if err := checkBatchNumbers(root, items, arr, &in.numText); err != nil {
		return nil, err
	}
	bt.context, bt.contextObj = in.encodeBatchObject(ctxV)
	bt.integrations, bt.integObj = in.encodeBatchObject(intV)
	return arr, nil
}

// batchEvents returns the events of a batch body's "batch" field, refusing
// a batch that is missing, empty or over --max-batch-events.
func (pp *parser) batchEvents(items *fastjson.Value) ([]*fastjson.Value, error) {
	if items == nil || items.Type() == fastjson.TypeNull {
		return nil, badRequest(errEmptyBatch, "batch is missing")
	}
	arr, err := items.Array()
	if err != nil {
		return nil, badRequest(errInvalidJSON, "batch must be an array")
	}
	if len(arr) == 0 {
		return nil, badRequest(errEmptyBatch, "batch is empty")
	}
	if len(arr) > pp.maxBatch {
		return nil, pp.errBatchTooLarge
	}
	return arr, nil
}

// encodeBatchObject appends v to in.scratch if it is an object, and
// returns what it appended and the object; nothing otherwise.
func (in *ingest) encodeBatchObject(v *fastjson.Value) ([]byte, *fastjson.Object) {
	if v == nil || v.Type() != fastjson.TypeObject {
		return nil, nil
	}
	start := len(in.scratch)
	in.scratch = appendValue(in.scratch, v)
	o, _ := v.Object()
	return in.scratch[start:], o
}

// checkBatchNumbers is checkNumbers over a batch body, naming where the
// bad number is: the event's index, or the batch-level field.
func checkBatchNumbers(root *fastjson.Object, items *fastjson.Value, events []*fastjson.Value, buf *[]byte) error {
	var err error
	root.Visit(func(k []byte, v *fastjson.Value) {
		if err != nil {
			return
		}
		if v != items {
			if e := checkNumbers(v, buf); e != nil {
				where := "body"
				if string(k) == segment.FieldContext || string(k) == segment.FieldIntegrations {
					where = string(k)
				}
				err = badRequest(errInvalidJSON, where+": "+e.Error())
			}
			return
		}
		for i, ev := range events {
			if e := checkNumbers(ev, buf); e != nil {
				err = badRequest(errInvalidJSON, fmt.Sprintf("event %d: %v", i, e))
				return
			}
		}
	})
	return err
}

func (pp *parser) addEvents(in *ingest, ep endpoint, items []*fastjson.Value, bt *batchTop) error {
	var keys keyMemo
	for i, item := range items {
		start := len(in.out)
		f, size := pp.writeEvent(in, ep, item, bt)
		if err := pp.addEvent(in, ep, &keys, bt, i, start, size, &f, item.Type() == fastjson.TypeObject); err != nil {
			return err
		}
	}
	in.sliceEvents()
	return nil
}

// writeEvent appends item to in.out as it will be stored: without writeKey
// and sentAt, with batch-level context/integrations merged in and with
// Segment's enrichment. size is the event as the client sent it (merged,
// not enriched), the figure --max-event-bytes bounds.
func (pp *parser) writeEvent(in *ingest, ep endpoint, item *fastjson.Value, bt *batchTop) (f fields, size int) {
	start := len(in.out)
	if item.Type() != fastjson.TypeObject {
		in.out = appendValue(in.out, item)
		return f, len(in.out) - start
	}
	o, _ := item.Object()
	out, first := writeFields(append(in.out, '{'), o, &f, bt)
	if !f.hasContext && bt.context != nil {
		out = appendKey(out, &first, []byte(segment.FieldContext))
		out = append(out, bt.context...)
	}
	if !f.hasIntegrations && bt.integrations != nil {
		out = appendKey(out, &first, []byte(segment.FieldIntegrations))
		out = append(out, bt.integrations...)
	}
	size = len(out) - start + 1
	in.out = in.appendEnrichment(out, first, ep, &f, bt)
	return f, size
}

// writeFields appends the fields of the event o that are stored as they
// came, merging batch-level context and integrations into the event's own,
// and records in f those validation and enrichment read. first reports
// whether none was written.
func writeFields(out []byte, o *fastjson.Object, f *fields, bt *batchTop) (_ []byte, first bool) {
	first = true
	over := overridden(o) // a repeated key: the last wins, alone
	i := -1
	o.Visit(func(k []byte, v *fastjson.Value) {
		i++
		if over != nil && over[i] {
			return
		}
		if !f.take(string(k), scalarOf(v)) {
			if string(k) == segment.FieldTimestamp {
				f.timestampValue = v
			}
			return
		}
		out = appendKey(out, &first, k)
		if batch := batchObject(k, bt); batch != nil && v.Type() == fastjson.TypeObject {
			out = appendMerged(out, v, batch)
		} else {
			out = appendValue(out, v)
		}
	})
	return out, first
}

// batchObject is the batch-level object merged into an event's field k,
// if any.
func batchObject(k []byte, bt *batchTop) *fastjson.Object {
	switch string(k) {
	case segment.FieldContext:
		return bt.contextObj
	case segment.FieldIntegrations:
		return bt.integObj
	}
	return nil
}

// appendMerged writes the event's own object followed by the batch-level
// keys it lacks: the event's values win, as in Segment's batch merge.
func appendMerged(out []byte, own *fastjson.Value, batch *fastjson.Object) []byte {
	o, _ := own.Object()
	n := len(out)
	out = appendObject(out, o)
	first := n+2 == len(out) // "{}"
	out = out[:len(out)-1]   // reopen
	ownKeys := newKeyLookup(o)
	over := overridden(batch)
	i := -1
	batch.Visit(func(k []byte, v *fastjson.Value) {
		i++
		if (over != nil && over[i]) || ownKeys.has(k) {
			return
		}
		out = appendKey(out, &first, k)
		out = appendValue(out, v)
	})
	return append(out, '}')
}
