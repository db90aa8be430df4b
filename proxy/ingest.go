package proxy

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"
	"unsafe"

	"github.com/klauspost/compress/gzip"
	"github.com/valyala/fastjson"

	"github.com/spillwayhq/spillway/spool"
)

// endpoint is what a request path asks for; it is also the bounded label
// set of the per-endpoint metrics.
type endpoint uint8

const (
	epTrack endpoint = iota
	epIdentify
	epPage
	epScreen
	epGroup
	epAlias
	epBatch
	epImport
	numEndpoints
)

var endpointNames = [numEndpoints]string{"track", "identify", "page", "screen", "group", "alias", "batch", "import"}

func (e endpoint) String() string { return endpointNames[e] }

// single reports whether the endpoint takes one event rather than a batch.
func (e endpoint) single() bool { return e < epBatch }

// route maps a path, analytics.js's short ones included, to its endpoint.
func route(path []byte) (endpoint, bool) {
	switch string(path) {
	case "/v1/track", "/v1/t":
		return epTrack, true
	case "/v1/identify", "/v1/i":
		return epIdentify, true
	case "/v1/page", "/v1/p":
		return epPage, true
	case "/v1/screen", "/v1/s":
		return epScreen, true
	case "/v1/group", "/v1/g":
		return epGroup, true
	case "/v1/alias", "/v1/a":
		return epAlias, true
	case "/v1/batch", "/v1/b":
		return epBatch, true
	case "/v1/import":
		return epImport, true
	}
	return 0, false
}

// rule is a Segment spec rule an event can break. Its label is the bounded
// "reason" of spillway_events_rejected_total; its text goes to the client
// and into the dead letter.
type rule uint8

const (
	ruleOK rule = iota
	ruleNotObject
	ruleMissingType
	ruleUnknownType
	ruleMissingIdentity
	ruleAliasUserID
	ruleAliasPreviousID
	ruleTrackEvent
	ruleGroupID
	numRules
)

var ruleLabels = [numRules]string{
	"", "not_object", "missing_type", "unknown_type", "missing_identity",
	"missing_user_id", "missing_previous_id", "missing_event", "missing_group_id",
}

var ruleTexts = [numRules]string{
	"",
	"event is not a JSON object",
	"type is missing",
	"type is not one of track, identify, page, screen, group, alias",
	"userId or anonymousId is required",
	"alias requires userId",
	"alias requires previousId",
	"track requires event",
	"group requires groupId",
}

// timeLayout is receivedAt's and timestamp's format: RFC 3339, UTC, ms,
// which is what Segment writes and what every SDK's parser takes.
const timeLayout = "2006-01-02T15:04:05.000Z"

// appendTime appends t in timeLayout. Every event's timestamp is written
// with it: a third of the cost of AppendFormat, which reads its layout each
// time.
func appendTime(dst []byte, t time.Time) []byte {
	t = t.UTC()
	year, month, day := t.Date()
	if year < 0 || year > 9999 {
		return t.AppendFormat(dst, timeLayout)
	}
	hour, minute, sec := t.Clock()
	ms := t.Nanosecond() / 1e6
	n := len(dst)
	dst = append(dst, "0000-00-00T00:00:00.000Z"...)
	b := dst[n:]
	put := func(at, v, width int) {
		for i := at + width - 1; i >= at; i-- {
			b[i] = byte('0' + v%10)
			v /= 10
		}
	}
	put(0, year, 4)
	put(5, int(month), 2)
	put(8, day, 2)
	put(11, hour, 2)
	put(14, minute, 2)
	put(17, sec, 2)
	put(20, ms, 3)
	return dst
}

// parser turns one request body into the events and dead letters of one
// Append. It holds only configuration, so one is shared by every request.
type parser struct {
	maxEvent int
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

func newParser(cfg Config, keys *keyring) *parser {
	maxOutput := 16 * cfg.MaxRequestBytes
	pp := &parser{
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

// ingest is the per-request working set. It is pooled so that the hot path
// allocates almost nothing: the parser's buffers, the output events and the
// inflate buffer are all reused once Append has returned.
type ingest struct {
	out      []byte // every output event, back to back
	events   []spool.Event
	dead     []spool.DeadLetter
	spans    []span // output bytes of events[i]
	deadSpan []span // output bytes of dead[i]
	rejected []rejection
	scratch  []byte // answer body, batch-level context

	fastKeys []int32 // for fastScan
	fastJunk []byte
	numText  []byte // for checkNumbers

	inflate []byte
	br      bytes.Reader
	zr      gzip.Reader
	auth    [192]byte

	rnd    [16 * 32]byte // random bytes for messageIds, drawn 32 at a time
	rndPos int
}

type span struct{ start, end int }

type rejection struct {
	index int
	rule  rule
}

func newIngest() *ingest {
	in := &ingest{}
	in.rndPos = len(in.rnd)
	return in
}

func (in *ingest) reset() {
	in.out = in.out[:0]
	clear(in.events) // drop write key strings
	in.events = in.events[:0]
	clear(in.dead)
	in.dead = in.dead[:0]
	in.spans = in.spans[:0]
	in.deadSpan = in.deadSpan[:0]
	in.rejected = in.rejected[:0]
	in.scratch = in.scratch[:0]
}

// batchTop is what a request says for all of its events.
type batchTop struct {
	key          []byte // batch-level writeKey, else Basic auth's
	sentAt       time.Time
	hasSentAt    bool
	context      []byte // batch-level context, marshalled once
	contextObj   *fastjson.Object
	integrations []byte
	integObj     *fastjson.Object
	now          time.Time
	nowText      []byte
}

// fields are the top-level fields of an event that validation and
// enrichment look at; the last of a duplicated key wins, as in most
// decoders.
type fields struct {
	typ, userID, anonID, prevID, event, groupID scalar
	messageID, timestamp, origTS, sentAt        scalar
	// The device's timestamp, for originalTimestamp: the tree parser keeps
	// its value, the fast path its stored form.
	timestampValue              *fastjson.Value
	timestampJSON               []byte
	writeKey                    []byte
	hasContext, hasIntegrations bool
}

// scalar is a top-level field as validation and enrichment read it:
// whether the event has it, its type and, for a string, its contents.
type scalar struct {
	set bool
	t   fastjson.Type
	s   []byte // a string's contents, unescaped
}

// take records a top-level field of an event, and reports whether it is
// stored as it came: false for the fields spillway drops or rewrites.
func (f *fields) take(k string, sc scalar) (stored bool) {
	switch k {
	case "writeKey":
		if sc.t == fastjson.TypeString && len(sc.s) > 0 {
			f.writeKey = sc.s
		}
		return false
	case "sentAt":
		f.sentAt = sc
		return false
	case "receivedAt":
		return false // always ours
	case "timestamp":
		f.timestamp = sc
		return false // rewritten by enrichment
	case "messageId":
		if sc.isBlank() {
			f.messageID = scalar{}
			return false
		}
		f.messageID = sc
	case "type":
		if sc.t == fastjson.TypeNull {
			f.typ = scalar{}
			return false
		}
		f.typ = sc
	case "originalTimestamp":
		f.origTS = sc
	case "userId":
		f.userID = sc
	case "anonymousId":
		f.anonID = sc
	case "previousId":
		f.prevID = sc
	case "event":
		f.event = sc
	case "groupId":
		f.groupID = sc
	case "context":
		f.hasContext = true
	case "integrations":
		f.hasIntegrations = true
	}
	return true
}

func scalarOf(v *fastjson.Value) scalar {
	sc := scalar{set: true, t: v.Type()}
	if sc.t == fastjson.TypeString {
		sc.s, _ = v.StringBytes()
	}
	return sc
}

// isID reports whether the field can identify something: a non-empty
// string or a number (several SDKs send numeric ids; Segment takes them).
func (sc scalar) isID() bool {
	return sc.t == fastjson.TypeString && len(sc.s) > 0 || sc.t == fastjson.TypeNumber
}

func (sc scalar) isBlank() bool {
	return sc.t == fastjson.TypeNull || sc.t == fastjson.TypeString && len(sc.s) == 0
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

// parseTree is parse for any body, through fastjson's tree.
func (pp *parser) parseTree(in *ingest, ep endpoint, body, headerKey []byte, now time.Time) error {
	jp, _ := pp.jsonParsers.Get().(*fastjson.Parser)
	if jp == nil {
		jp = new(fastjson.Parser)
	}
	defer pp.jsonParsers.Put(jp)
	v, err := jp.ParseBytes(body)
	if err != nil {
		return badRequest(errInvalidJSON, "body is not valid JSON: "+jsonErrorText(err))
	}
	// After the parse, so that every backslash is inside a string.
	if fixed, err := checkEscapes(body); err != nil {
		return badRequest(errInvalidJSON, "body is not valid JSON: "+err.Error())
	} else if &fixed[0] != &body[0] {
		if v, err = jp.ParseBytes(fixed); err != nil {
			return fmt.Errorf("reparse after rewriting surrogate escapes: %w", err)
		}
	}
	if v.Type() != fastjson.TypeObject {
		return badRequest(errInvalidJSON, "body must be a JSON object")
	}
	bt := batchTop{key: headerKey, now: now}
	in.scratch = appendTime(in.scratch, now)
	nowEnd := len(in.scratch)

	if ep.single() {
		if err := checkNumbers(v, &in.numText); err != nil {
			return badRequest(errInvalidJSON, "event 0: "+err.Error())
		}
		one := [1]*fastjson.Value{v}
		bt.nowText = in.scratch[:nowEnd]
		return pp.addEvents(in, ep, one[:], &bt)
	}

	root, _ := v.Object()
	var items *fastjson.Value
	var ctxV, intV *fastjson.Value
	root.Visit(func(k []byte, v *fastjson.Value) {
		switch string(k) {
		case "batch":
			items = v
		case "writeKey":
			if s, err := v.StringBytes(); err == nil && len(s) > 0 {
				bt.key = s
			}
		case "sentAt":
			bt.sentAt, bt.hasSentAt = parseTime(scalarOf(v))
		case "context":
			ctxV = v
		case "integrations":
			intV = v
		}
	})
	if items == nil || items.Type() == fastjson.TypeNull {
		return badRequest(errEmptyBatch, "batch is missing")
	}
	arr, err := items.Array()
	if err != nil {
		return badRequest(errInvalidJSON, "batch must be an array")
	}
	if len(arr) == 0 {
		return badRequest(errEmptyBatch, "batch is empty")
	}
	if len(arr) > pp.maxBatch {
		return pp.errBatchTooLarge
	}
	if err := checkBatchNumbers(root, items, arr, &in.numText); err != nil {
		return err
	}
	// Batch-level objects are encoded once and copied into each event
	// that lacks them.
	if ctxV != nil && ctxV.Type() == fastjson.TypeObject {
		start := len(in.scratch)
		in.scratch = appendValue(in.scratch, ctxV)
		bt.context = in.scratch[start:]
		bt.contextObj, _ = ctxV.Object()
	}
	if intV != nil && intV.Type() == fastjson.TypeObject {
		start := len(in.scratch)
		in.scratch = appendValue(in.scratch, intV)
		bt.integrations = in.scratch[start:]
		bt.integObj, _ = intV.Object()
	}
	// Appending never rewrites bytes already in a slice, so slices taken
	// before scratch grew still hold the right bytes.
	bt.nowText = in.scratch[:nowEnd]
	return pp.addEvents(in, ep, arr, &bt)
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
				if string(k) == "context" || string(k) == "integrations" {
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
	if size > pp.maxEvent {
		return badRequest(errTooLarge, fmt.Sprintf("event %d is over --max-event-bytes (%d bytes)", i, pp.maxEvent))
	}
	if len(in.out) > pp.maxOutput {
		return pp.errOutputTooLarge
	}
	key := bt.key
	if f.writeKey != nil {
		key = f.writeKey
	}
	if !keys.have || !bytes.Equal(key, keys.key) {
		wk, ok := pp.keys.Load().resolve(key)
		if !ok {
			return errUnauthorized
		}
		*keys = keyMemo{key: key, wk: wk, have: true}
	}
	r := ruleNotObject
	if isObject {
		r = validate(ep, f)
	}
	if r == ruleOK {
		in.events = append(in.events, spool.Event{WriteKey: keys.wk})
		in.spans = append(in.spans, span{start, len(in.out)})
		return nil
	}
	in.deadSpan = append(in.deadSpan, span{start, len(in.out)})
	in.rejected = append(in.rejected, rejection{index: i, rule: r})
	in.dead = append(in.dead, spool.DeadLetter{
		Reason:   spool.ReasonInvalid,
		Error:    ruleTexts[r],
		At:       bt.now,
		WriteKey: keys.wk,
	})
	return nil
}

// sliceEvents hands out the events' slices of in.out, once it has stopped
// growing. Capacity is capped so that nothing downstream can append into a
// neighbour.
func (in *ingest) sliceEvents() {
	for i, s := range in.spans {
		in.events[i].Data = in.out[s.start:s.end:s.end]
	}
	for i, s := range in.deadSpan {
		in.dead[i].Event = in.out[s.start:s.end:s.end]
	}
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
	out := append(in.out, '{')
	first := true
	over := overridden(o) // a repeated key: the last wins, alone
	i := -1
	o.Visit(func(k []byte, v *fastjson.Value) {
		i++
		if over != nil && over[i] {
			return
		}
		if !f.take(string(k), scalarOf(v)) {
			if string(k) == "timestamp" {
				f.timestampValue = v
			}
			return
		}
		switch string(k) {
		case "context":
			if bt.contextObj != nil && v.Type() == fastjson.TypeObject {
				out = appendKey(out, &first, k)
				out = appendMerged(out, v, bt.contextObj)
				return
			}
		case "integrations":
			if bt.integObj != nil && v.Type() == fastjson.TypeObject {
				out = appendKey(out, &first, k)
				out = appendMerged(out, v, bt.integObj)
				return
			}
		}
		out = appendKey(out, &first, k)
		out = appendValue(out, v)
	})
	if !f.hasContext && bt.context != nil {
		out = appendKey(out, &first, []byte("context"))
		out = append(out, bt.context...)
	}
	if !f.hasIntegrations && bt.integrations != nil {
		out = appendKey(out, &first, []byte("integrations"))
		out = append(out, bt.integrations...)
	}
	size = len(out) - start + 1
	in.out = in.appendEnrichment(out, first, ep, &f, bt)
	return f, size
}

// appendEnrichment appends what spillway adds to an event whose own fields
// are in out (first: none), and closes it.
func (in *ingest) appendEnrichment(out []byte, first bool, ep endpoint, f *fields, bt *batchTop) []byte {
	if !f.typ.set && ep.single() {
		out = appendKey(out, &first, []byte("type"))
		out = append(out, '"')
		out = append(out, endpointNames[ep]...)
		out = append(out, '"')
	}
	if !f.messageID.set {
		out = appendKey(out, &first, []byte("messageId"))
		out = in.appendUUID(out)
	}
	out = appendTimestamps(out, &first, f, bt)
	out = appendKey(out, &first, []byte("receivedAt"))
	out = append(out, '"')
	out = append(out, bt.nowText...)
	return append(out, '"', '}')
}

// appendTimestamps corrects the device's clock as Segment does: the time the
// device took between timestamp and sentAt is trusted, its wall clock is
// not, so timestamp = receivedAt - (sentAt - timestamp). The device's value
// is kept as originalTimestamp unless the event already has one (it was
// forwarded by another spillway, which kept the device's).
func appendTimestamps(out []byte, first *bool, f *fields, bt *batchTop) []byte {
	ts := bt.now
	if f.timestamp.set && f.timestamp.t != fastjson.TypeNull {
		if !f.origTS.set {
			out = appendKey(out, first, []byte("originalTimestamp"))
			if f.timestampValue == nil {
				out = append(out, f.timestampJSON...)
			} else {
				out = appendValue(out, f.timestampValue)
			}
		}
		if t, ok := parseTime(f.timestamp); ok {
			ts = t
			sentAt, hasSentAt := bt.sentAt, bt.hasSentAt
			if f.sentAt.set {
				sentAt, hasSentAt = parseTime(f.sentAt)
			}
			if hasSentAt {
				ts = bt.now.Add(t.Sub(sentAt))
			}
		}
	}
	out = appendKey(out, first, []byte("timestamp"))
	out = append(out, '"')
	out = appendTime(out, ts)
	return append(out, '"')
}

func appendKey(out []byte, first *bool, k []byte) []byte {
	if !*first {
		out = append(out, ',')
	}
	*first = false
	out = appendString(out, k)
	return append(out, ':')
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

// validate applies the Segment spec rules to an event object.
func validate(ep endpoint, f *fields) rule {
	var typ string
	switch {
	case f.typ.set:
		if f.typ.t != fastjson.TypeString {
			return ruleUnknownType
		}
		typ = unsafeString(f.typ.s)
	case ep.single():
		typ = endpointNames[ep]
	default:
		return ruleMissingType
	}
	switch typ {
	case "identify", "page", "screen":
		if !f.userID.isID() && !f.anonID.isID() {
			return ruleMissingIdentity
		}
	case "track":
		if !f.userID.isID() && !f.anonID.isID() {
			return ruleMissingIdentity
		}
		if f.event.t != fastjson.TypeString || len(f.event.s) == 0 {
			return ruleTrackEvent
		}
	case "group":
		if !f.userID.isID() && !f.anonID.isID() {
			return ruleMissingIdentity
		}
		if !f.groupID.isID() {
			return ruleGroupID
		}
	case "alias":
		if !f.userID.isID() {
			return ruleAliasUserID
		}
		if !f.prevID.isID() {
			return ruleAliasPreviousID
		}
	default:
		return ruleUnknownType
	}
	return ruleOK
}

// parseTime reads an ISO 8601 time as the SDKs write it: with a zone
// (analytics-node, -go, -ruby) or without one (analytics-python with naive
// datetimes, taken as UTC).
func parseTime(sc scalar) (time.Time, bool) {
	if sc.t != fastjson.TypeString {
		return time.Time{}, false
	}
	s := unsafeString(sc.s)
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, true
	}
	if t, err := time.Parse("2006-01-02T15:04:05.999999999", s); err == nil {
		return t, true
	}
	return time.Time{}, false
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

// unsafeString views b as a string without copying. Only for calls that
// do not keep their argument past the request (time.Parse keeps it only in
// an error we drop; Object.Get compares it).
func unsafeString(b []byte) string {
	return unsafe.String(unsafe.SliceData(b), len(b))
}

// appendUUID appends a random (version 4) UUID as a JSON string.
func (in *ingest) appendUUID(out []byte) []byte {
	if in.rndPos+16 > len(in.rnd) {
		_, _ = rand.Read(in.rnd[:]) // never fails (crypto/rand, Go 1.24+)
		in.rndPos = 0
	}
	u := in.rnd[in.rndPos : in.rndPos+16]
	in.rndPos += 16
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	out = append(out, '"')
	for i, c := range u {
		if i == 4 || i == 6 || i == 8 || i == 10 {
			out = append(out, '-')
		}
		out = append(out, hexDigits[c>>4], hexDigits[c&0xf])
	}
	return append(out, '"')
}
