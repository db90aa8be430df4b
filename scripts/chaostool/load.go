package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// The load is W1's shape: POST /v1/batch with 20 to 100 track events,
// from a few clients each with one request in flight. Every event's
// messageId is chaos-N, N numbered from 0 across the whole soak, so the
// sets of acknowledged and delivered events are bitsets over N. An event
// marked poison (the flapping destination answers 400 to any batch
// holding one) has the messageId chaos-N-poison and "poison": true in its
// properties.

const (
	idPrefix     = "chaos-"
	poisonSuffix = "-poison"
	writeKey     = "chaoskey"
)

// load sends events to whichever spillway is current and records which
// were acknowledged.
type load struct {
	clients    int
	poisonFrac float64 // share of events marked poison
	seed       uint64

	target atomic.Pointer[string] // base URL of the current spillway, or nil
	rate   atomic.Uint64          // events/s (float64 bits); 0 means closed loop
	next   atomic.Uint64          // next event number

	acked    bitset // events answered 200
	poisoned bitset // events marked poison (acknowledged or not)

	paceMu sync.Mutex
	paceAt time.Time // when the next event is due at the current rate

	ok, unavailable, internal, other, failed atomic.Uint64 // requests by answer
	ackedEvents                              atomic.Uint64
	lastAck                                  atomic.Int64 // unix ns of the latest 200
}

// answers is a snapshot of the request counters.
type answers struct {
	OK, Unavailable, Internal, Other, Failed uint64
}

func (l *load) answers() answers {
	return answers{l.ok.Load(), l.unavailable.Load(), l.internal.Load(), l.other.Load(), l.failed.Load()}
}

func (a answers) minus(b answers) answers {
	return answers{a.OK - b.OK, a.Unavailable - b.Unavailable, a.Internal - b.Internal, a.Other - b.Other, a.Failed - b.Failed}
}

func (a answers) String() string {
	return fmt.Sprintf("200: %d, 503: %d, 500: %d, other: %d, no answer: %d", a.OK, a.Unavailable, a.Internal, a.Other, a.Failed)
}

func (l *load) setTarget(base string) {
	if base == "" {
		l.target.Store(nil)
		return
	}
	l.target.Store(&base)
}

func (l *load) setRate(eventsPerS float64) {
	l.paceMu.Lock()
	l.paceAt = time.Time{}
	l.paceMu.Unlock()
	l.rate.Store(uint64(eventsPerS * 1000))
}

// pace returns when a request of n events may go at the current rate. A
// rate that could not be kept (spillway down, or slow) is not made up with
// a burst beyond 200 ms of events.
func (l *load) pace(n int) time.Time {
	r := float64(l.rate.Load()) / 1000
	now := time.Now()
	if r <= 0 {
		return now
	}
	l.paceMu.Lock()
	defer l.paceMu.Unlock()
	if floor := now.Add(-200 * time.Millisecond); l.paceAt.Before(floor) {
		l.paceAt = floor
	}
	at := l.paceAt
	l.paceAt = l.paceAt.Add(time.Duration(float64(n) / r * float64(time.Second)))
	return at
}

// run sends until ctx ends. Each request is bounded by a 5 s timeout and
// each client by the pace, so the loop is bounded in time and in count.
func (l *load) run(ctx context.Context) {
	tr := &http.Transport{MaxIdleConnsPerHost: l.clients, DisableCompression: true, IdleConnTimeout: 30 * time.Second}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	var wg sync.WaitGroup
	for c := range l.clients {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(l.seed, uint64(c)+1))
			var buf bytes.Buffer
			for ctx.Err() == nil {
				l.once(ctx, client, rng, &buf)
			}
		})
	}
	wg.Wait()
}

func (l *load) once(ctx context.Context, client *http.Client, rng *rand.Rand, buf *bytes.Buffer) {
	target := l.target.Load()
	if target == nil {
		sleepCtx(ctx, 20*time.Millisecond)
		return
	}
	n := 20 + rng.IntN(81)
	if !sleepUntil(ctx, l.pace(n)) {
		return
	}
	first := l.next.Add(uint64(n)) - uint64(n)
	poison := make([]bool, n)
	for i := range poison {
		if rng.Float64() < l.poisonFrac {
			poison[i] = true
			l.poisoned.addRange(first+uint64(i), 1)
		}
	}
	buf.Reset()
	writeBatch(buf, rng, first, poison)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, *target+"/v1/batch", bytes.NewReader(buf.Bytes()))
	if err != nil {
		l.failed.Add(1)
		return
	}
	req.SetBasicAuth(writeKey, "")
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		l.failed.Add(1)
		if ctx.Err() == nil {
			sleepCtx(ctx, 10*time.Millisecond) // refused: spillway is restarting
		}
		return
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
		l.acked.addRange(first, uint64(n))
		l.ackedEvents.Add(uint64(n))
		l.lastAck.Store(time.Now().UnixNano())
		l.ok.Add(1)
	case http.StatusServiceUnavailable:
		l.unavailable.Add(1)
		sleepCtx(ctx, 50*time.Millisecond) // as an SDK would, though sooner than Retry-After
	case http.StatusInternalServerError:
		l.internal.Add(1)
	default:
		l.other.Add(1)
	}
}

var (
	eventNames = []string{"Product Viewed", "Product Added", "Cart Viewed", "Checkout Started",
		"Order Completed", "Products Searched", "Coupon Applied", "Promotion Viewed"}
	productNames = []string{"Classic Navy Parka", "Slim Olive Chino", "Merino Sand Sweater",
		"Trail Sneaker", "Canvas Tote", "Quilted Rain Shell", "Heritage Leather Belt"}
	categories = []string{"Apparel/Tops", "Apparel/Outerwear", "Footwear", "Accessories/Bags", "Sale"}
	userAgents = []string{
		"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36",
		"Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
		"Mozilla/5.0 (X11; Linux x86_64; rv:127.0) Gecko/20100101 Firefox/127.0",
	}
	locales = []string{"en-US", "en-GB", "de-DE", "fr-FR", "nl-NL"}
)

// writeBatch writes a /v1/batch body of len(poison) track events numbered
// from first, those whose poison is true marked poison. Events are about
// 600 bytes, shaped like analytics.js's.
func writeBatch(b *bytes.Buffer, rng *rand.Rand, first uint64, poison []bool) {
	now := time.Now().UTC()
	ts := now.Format("2006-01-02T15:04:05.000Z")
	b.WriteString(`{"batch":[`)
	for i := range poison {
		if i > 0 {
			b.WriteByte(',')
		}
		user := rng.IntN(20000)
		product := rng.IntN(4000)
		b.WriteString(`{"type":"track","event":"`)
		b.WriteString(eventNames[rng.IntN(len(eventNames))])
		b.WriteString(`","userId":"usr_`)
		b.WriteString(strconv.Itoa(1000000 + user))
		b.WriteString(`","anonymousId":"anon-`)
		b.WriteString(strconv.FormatUint(rng.Uint64()>>16, 36))
		b.WriteString(`","messageId":"` + idPrefix)
		b.WriteString(strconv.FormatUint(first+uint64(i), 10))
		if poison[i] {
			b.WriteString(poisonSuffix)
		}
		b.WriteString(`","timestamp":"`)
		b.WriteString(ts)
		b.WriteString(`","properties":{"product_id":"p`)
		b.WriteString(strconv.Itoa(product))
		b.WriteString(`","name":"`)
		b.WriteString(productNames[product%len(productNames)])
		b.WriteString(`","category":"`)
		b.WriteString(categories[product%len(categories)])
		b.WriteString(`","price":`)
		b.WriteString(strconv.Itoa(5 + product%200))
		b.WriteString(`.99,"quantity":`)
		b.WriteString(strconv.Itoa(1 + rng.IntN(3)))
		b.WriteString(`,"currency":"USD"`)
		if poison[i] {
			b.WriteString(`,"poison":true`)
		}
		b.WriteString(`},"context":{"library":{"name":"analytics.js","version":"next-1.72.0"},"ip":"10.`)
		b.WriteString(strconv.Itoa(user % 250))
		b.WriteString(`.0.1","locale":"`)
		b.WriteString(locales[user%len(locales)])
		b.WriteString(`","userAgent":"`)
		b.WriteString(userAgents[user%len(userAgents)])
		b.WriteString(`","page":{"path":"/products/p`)
		b.WriteString(strconv.Itoa(product))
		b.WriteString(`","referrer":"https://www.google.com/"}}}`)
	}
	b.WriteString(`],"sentAt":"`)
	b.WriteString(ts)
	b.WriteString(`"}`)
}

// parseIDs calls fn with the number of each chaos-N messageId in body and
// whether it is marked poison. It returns how many events it could not
// read an id from (the count of "messageId" keys it saw without one).
func parseIDs(body []byte, fn func(n uint64, poison bool)) (unknown int) {
	const key = `"messageId"`
	for {
		i := bytes.Index(body, []byte(key))
		if i < 0 {
			return unknown
		}
		body = body[i+len(key):]
		body = bytes.TrimLeft(body, " \t\r\n")
		if len(body) == 0 || body[0] != ':' {
			unknown++
			continue
		}
		body = bytes.TrimLeft(body[1:], " \t\r\n")
		if !bytes.HasPrefix(body, []byte(`"`+idPrefix)) {
			unknown++
			continue
		}
		body = body[1+len(idPrefix):]
		j := 0
		var n uint64
		for j < len(body) && body[j] >= '0' && body[j] <= '9' {
			n = n*10 + uint64(body[j]-'0')
			j++
		}
		if j == 0 {
			unknown++
			continue
		}
		rest := body[j:]
		switch {
		case bytes.HasPrefix(rest, []byte(`"`)):
			fn(n, false)
		case bytes.HasPrefix(rest, []byte(poisonSuffix+`"`)):
			fn(n, true)
		default:
			unknown++
		}
		body = rest
	}
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

func sleepUntil(ctx context.Context, at time.Time) bool {
	d := time.Until(at)
	if d <= 0 {
		return ctx.Err() == nil
	}
	return sleepCtx(ctx, d)
}
