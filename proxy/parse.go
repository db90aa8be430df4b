package proxy

import (
	"bytes"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/valyala/fastjson"

	"github.com/spillwayhq/spillway/internal/privacy"
	"github.com/spillwayhq/spillway/internal/segment"
	"github.com/spillwayhq/spillway/spool"
)

// parser turns one request body into the events and dead letters of one
// Append. It holds only configuration, so one is shared by every request.
type parser struct {
	// strict refuses a request holding an event over maxEvent rather than
	// dead-letter that event alone (Config.Strict).
	strict   bool
	maxEvent int
	// privacy is applied to every event before it is stored; nil when
	// no rule is set, which costs the hot path nothing.
	privacy *privacy.Rules
	// plan is the tracking plan in force, swapped whole by a reload; nil
	// for none.
	plan     atomic.Pointer[planState]
	maxBatch int
	// maxOutput bounds what a request may expand to once batch-level
	// context is copied into each event: without it a 400 KiB context and
	// 2500 tiny events would ask for a GiB.
	maxOutput int
	// keys is swapped whole by Server.SetWriteKeys (SIGHUP).
	keys atomic.Pointer[keyring]
	// jsonParsers are held only while a body is parsed, not while its
	// events wait for their fsync: a parser keeps its request's values,
	// so one per request in flight would make memory grow with the
	// number of connections instead of the number of cores.
	jsonParsers sync.Pool

	errBatchTooLarge  error
	errOutputTooLarge error
}

func newParser(cfg Config, keys *keyring, rules *privacy.Rules) *parser {
	maxOutput := 16 * cfg.MaxRequestBytes
	pp := &parser{
		strict:    cfg.Strict,
		privacy:   rules,
		maxEvent:  cfg.MaxEventBytes,
		maxBatch:  cfg.MaxBatchEvents,
		maxOutput: maxOutput,
		errBatchTooLarge: badRequest(errTooLarge,
			fmt.Sprintf("batch is over --max-batch-events (%d events)", cfg.MaxBatchEvents)),
		errOutputTooLarge: badRequest(errTooLarge,
			fmt.Sprintf("batch is over %d bytes once batch-level context is merged into its events", maxOutput)),
	}
	pp.keys.Store(keys)
	return pp
}

// parse fills in.events and in.dead from body. It returns a request-level
// error (400/401) if nothing of the request may be stored.
func (pp *parser) parse(in *ingest, ep endpoint, body, headerKey []byte, now time.Time) error {
	in.reset()
	if len(body) == 0 {
		return errEmptyBody
	}
	// JSON is UTF-8 (RFC 8259). Well-behaved SDKs never send anything
	// else, and bytes that are not UTF-8 could not be stored as sent.
	if !utf8.Valid(body) {
		return badRequest(errInvalidJSON, fmt.Sprintf("body is not valid UTF-8 (at byte %d)", invalidUTF8At(body)))
	}
	if pp.parseFast(in, ep, body, headerKey, now) {
		return nil
	}
	return pp.parseTree(in, ep, body, headerKey, now)
}

// keyMemo remembers the last write key resolved. Events of one request
// nearly always share a key; comparing with the previous one compares two
// client-supplied values, so it leaks nothing and saves a hash per event.
type keyMemo struct {
	key  []byte
	wk   string
	have bool
}

// addEvent files the event written to in.out from start as an event to
// store or, failing validation, a dead letter.
func (pp *parser) addEvent(in *ingest, ep endpoint, keys *keyMemo, bt *batchTop, i, start, size int, f *fields, isObject bool) error {
	if size > pp.maxEvent && (pp.strict || ep.single()) {
		return badRequest(errTooLarge, fmt.Sprintf("event %d is over --max-event-bytes (%d bytes)", i, pp.maxEvent))
	}
	if len(in.out) > pp.maxOutput {
		return pp.errOutputTooLarge
	}
	wk, err := pp.resolveKey(keys, bt, f)
	if err != nil {
		return err
	}
	if size > pp.maxEvent {
		if err := pp.applyPrivacy(in, start); err != nil {
			return err
		}
		pp.addTooLarge(in, bt, wk, i, start, size)
		return nil
	}
	r := segment.RuleNotObject
	if isObject {
		r = validate(ep, f)
	}
	if r == segment.RuleOK {
		if ps := pp.plan.Load(); ps != nil {
			// Before the privacy rules: the plan describes the event as the
			// app sends it.
			vs, err := pp.checkPlan(in, ps, start, f)
			if err != nil {
				return err
			}
			if vs != nil {
				if pp.strict {
					return badRequest(errInvalidEvent, fmt.Sprintf("event %d: %s", i, vs[0].Description))
				}
				if err := pp.applyPrivacy(in, start); err != nil {
					return err
				}
				in.rejected = append(in.rejected, rejection{index: i, code: codeViolation, text: vs[0].Description})
				from := len(in.viol)
				in.viol = appendViolations(in.viol, vs)
				in.addDead(blockedDeadLetter(bt, wk, vs), span{start, len(in.out)}, span{from, len(in.viol)})
				return nil
			}
		}
		if err := pp.applyPrivacy(in, start); err != nil {
			return err
		}
		in.events = append(in.events, spool.Event{WriteKey: wk})
		in.spans = append(in.spans, span{start, len(in.out)})
		id := span{len(in.ids), len(in.ids)}
		if f.messageID.t == fastjson.TypeString {
			in.ids = append(in.ids, f.messageID.s...)
			id.end = len(in.ids)
		}
		in.idSpans = append(in.idSpans, id)
		return nil
	}
	if err := pp.applyPrivacy(in, start); err != nil {
		return err
	}
	in.rejected = append(in.rejected, ruleRejection(i, r))
	in.addDead(spool.DeadLetter{
		Reason:   spool.ReasonInvalid,
		Error:    r.String(),
		At:       bt.now,
		WriteKey: wk,
	}, span{start, len(in.out)}, span{})
	return nil
}

// addTooLarge dead-letters the event of a batch written to in.out from
// start, which is over --max-event-bytes: older analytics-node counts an
// event's size short and drops a whole batch answered 400, so refusing
// the request would lose every other event of it. The dead letter keeps
// the event's first maxEvent bytes as a JSON string (cut, it is no longer
// JSON) and its real size, enough to find the code that sent it without
// storing what the limit is there to keep out.
func (pp *parser) addTooLarge(in *ingest, bt *batchTop, wk string, i, start, size int) {
	cut := start + pp.maxEvent
	for cut > start && !utf8.RuneStart(in.out[cut]) {
		cut-- // whole characters only
	}
	text := fmt.Sprintf("event is %d bytes, over --max-event-bytes (%d bytes)", size, pp.maxEvent)
	// appendString reads the event's bytes while it writes past them; the
	// string then takes the event's place.
	str := len(in.out)
	in.out = appendString(in.out, in.out[start:cut])
	in.out = in.out[:start+copy(in.out[start:], in.out[str:])]
	in.rejected = append(in.rejected, rejection{index: i, code: codeTooLarge, text: text})
	in.addDead(spool.DeadLetter{
		Reason:   spool.ReasonTooLarge,
		Error:    text,
		At:       bt.now,
		WriteKey: wk,
		Size:     size,
	}, span{start, len(in.out)}, span{})
}

// applyPrivacy applies the global privacy rules to the event written to
// in.out from start, before anything keeps it, dead letters included: what
// the rules remove never reaches the disk. An event that is not an object
// has no fields, and comes out as it is.
func (pp *parser) applyPrivacy(in *ingest, start int) error {
	if pp.privacy == nil {
		return nil
	}
	end := len(in.out)
	out, err := pp.privacy.Apply(in.out, in.out[start:end])
	if err != nil {
		return err // the event was written by us: a bug, answered 500
	}
	in.out = out[:start+copy(out[start:], out[end:])]
	return nil
}

// resolveKey returns the write key an event is stored under: its own
// writeKey, else the batch's, else Basic auth's, if the keyring accepts it.
func (pp *parser) resolveKey(keys *keyMemo, bt *batchTop, f *fields) (string, error) {
	key := bt.key
	if f.writeKey != nil {
		key = f.writeKey
	}
	if !keys.have || !bytes.Equal(key, keys.key) {
		wk, ok := pp.keys.Load().resolve(key)
		if !ok {
			return "", errUnauthorized
		}
		*keys = keyMemo{key: key, wk: wk, have: true}
	}
	return keys.wk, nil
}

// maxJSONErrorText bounds the parser's error in an answer.
const maxJSONErrorText = 200

// jsonErrorText is fastjson's error, short: it wraps its error once per
// level of nesting ("cannot parse array: cannot parse array value: ..."),
// so a deeply nested body would be answered with kilobytes of it.
func jsonErrorText(err error) string {
	s := err.Error()
	if len(s) <= maxJSONErrorText {
		return s
	}
	const wrap = "cannot parse "
	head, rest, _ := strings.Cut(s, ": ") // "cannot parse JSON"
	for strings.HasPrefix(rest, wrap) {
		colon, semi := strings.Index(rest, ": "), strings.IndexByte(rest, ';')
		if colon < 0 || (semi >= 0 && semi < colon) {
			break
		}
		rest = rest[colon+2:]
	}
	s = head + ": " + rest
	if len(s) > maxJSONErrorText {
		s = strings.ToValidUTF8(s[:maxJSONErrorText], "") + "…"
	}
	return s
}

// invalidUTF8At returns the offset of the first byte of b that is not
// part of valid UTF-8.
func invalidUTF8At(b []byte) int {
	for i := 0; i < len(b); {
		r, size := utf8.DecodeRune(b[i:])
		if r == utf8.RuneError && size == 1 {
			return i
		}
		i += size
	}
	return len(b)
}
