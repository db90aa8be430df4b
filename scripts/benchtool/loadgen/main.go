// Command loadgen drives a Segment-compatible endpoint (spillway, or the
// bench sink in null mode) with realistic track events over N keep-alive
// connections, closed-loop or at a fixed event rate, and reports accepted
// throughput and ack latency.
//
// stdout: one JSON line (the result) for scripts/bench; stderr: one human
// line, and with --progress a "progress {...}" line every interval.
package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"github.com/spillwayhq/spillway/scripts/benchtool/internal/loadreport"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/valyala/fasthttp"
)

type config struct {
	url      string
	endpoint string
	conns    int
	duration time.Duration
	warmup   time.Duration
	rate     float64
	batch    int
	pool     int
	writeKey string
	seed     uint64
	progress time.Duration
	timeout  time.Duration
}

type workerStats struct {
	h               hist
	requests, reqOK uint64
	eventsOK, rawOK uint64
	bodyBytes       uint64
	statuses, errs  map[string]int
	lateMax         time.Duration
}

func main() {
	var c config
	flag.StringVar(&c.url, "url", "http://127.0.0.1:8080", "base URL of the target (http only)")
	flag.StringVar(&c.endpoint, "endpoint", "/v1/batch", "/v1/batch (--batch events per request) or /v1/track (one event per request)")
	flag.IntVar(&c.conns, "conns", 64, "connections, each with one request in flight")
	flag.DurationVar(&c.duration, "duration", 10*time.Second, "measurement window")
	flag.DurationVar(&c.warmup, "warmup", time.Second, "load sent before the window, not counted")
	flag.Float64Var(&c.rate, "rate", 0, "events/s across all connections (0: as fast as answers come)")
	flag.IntVar(&c.batch, "batch", 100, "events per /v1/batch request")
	flag.IntVar(&c.pool, "pool", 20000, "distinct pre-generated events (bodies are reused with fresh messageIds)")
	flag.StringVar(&c.writeKey, "write-key", "bench-write-key", "write key sent as the Basic auth user name")
	flag.Uint64Var(&c.seed, "seed", 0, "content seed (0: from the clock)")
	flag.DurationVar(&c.progress, "progress", 0, "print cumulative accepted events to stderr this often (0: never)")
	flag.DurationVar(&c.timeout, "timeout", 30*time.Second, "per-request timeout")
	flag.Parse()
	if err := run(c); err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}
}

func run(c config) error {
	u, err := url.Parse(c.url)
	if err != nil || u.Scheme != "http" || u.Host == "" {
		return fmt.Errorf("--url must be http://host:port, got %q", c.url)
	}
	if c.conns < 1 {
		return errors.New("--conns must be >= 1")
	}
	perBody := c.batch
	if c.endpoint == "/v1/track" {
		perBody = 0
	} else if c.batch < 1 {
		return errors.New("--batch must be >= 1")
	}
	if c.seed == 0 {
		c.seed = uint64(time.Now().UnixNano())
	}
	nbodies := c.pool
	if perBody > 0 {
		nbodies = max(c.pool/perBody, 1)
	}
	// Each connection owns the bodies i with i%conns == its number and
	// patches them in place, so a body is never copied or shared.
	nbodies = max(nbodies, c.conns)
	pool := buildPool(c.seed, nbodies, perBody)
	eventsPerReq := uint64(max(perBody, 1))

	hc := &fasthttp.HostClient{
		Addr:                          u.Host,
		MaxConns:                      c.conns,
		ReadTimeout:                   c.timeout,
		WriteTimeout:                  c.timeout,
		MaxIdleConnDuration:           time.Minute,
		NoDefaultUserAgentHeader:      true,
		DisableHeaderNamesNormalizing: true,
		ReadBufferSize:                16 << 10,
		WriteBufferSize:               64 << 10,
		MaxConnWaitTimeout:            c.timeout,
	}
	target := []byte(u.Scheme + "://" + u.Host + c.endpoint)
	auth := "Basic " + base64.StdEncoding.EncodeToString([]byte(c.writeKey+":"))

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	start := time.Now()
	winStart := start.Add(c.warmup)
	deadline := winStart.Add(c.duration)
	var stopAt atomic.Int64 // unix ns; workers stop starting requests after it
	stopAt.Store(deadline.UnixNano())
	go func() {
		<-ctx.Done()
		stopAt.Store(time.Now().UnixNano())
	}()

	var interval time.Duration // between request slots when rate-limited
	if c.rate > 0 {
		interval = time.Duration(float64(time.Second) * float64(eventsPerReq) / c.rate)
	}
	var seq atomic.Uint64     // request number: slot, body choice and messageId counter
	var totalOK atomic.Uint64 // events accepted since start, for --progress
	stats := make([]*workerStats, c.conns)
	var wg sync.WaitGroup
	for w := range c.conns {
		st := &workerStats{statuses: map[string]int{}, errs: map[string]int{}}
		stats[w] = st
		wg.Go(func() {
			req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
			defer fasthttp.ReleaseRequest(req)
			defer fasthttp.ReleaseResponse(resp)
			mine := 0 // index among this connection's bodies
			for {
				n := seq.Add(1) - 1
				var due time.Time
				if interval > 0 {
					due = start.Add(time.Duration(n) * interval)
					if due.UnixNano() >= stopAt.Load() {
						return
					}
					if d := time.Until(due); d > 0 {
						select {
						case <-time.After(d):
						case <-ctx.Done():
							return
						}
					}
				}
				t0 := time.Now()
				if t0.UnixNano() >= stopAt.Load() {
					return
				}
				bd := &pool[w+mine*c.conns]
				mine++
				if w+mine*c.conns >= len(pool) {
					mine = 0
				}
				patchCounters(bd.data, bd.counters, n*eventsPerReq)
				req.Reset()
				req.SetRequestURIBytes(target)
				req.Header.SetMethod(fasthttp.MethodPost)
				req.Header.SetContentType("application/json")
				req.Header.Set("Authorization", auth)
				req.SetBodyRaw(bd.data)
				resp.Reset()
				err := hc.Do(req, resp)
				t1 := time.Now()
				ok := err == nil && resp.StatusCode() == fasthttp.StatusOK
				if ok {
					totalOK.Add(uint64(bd.events))
				}
				if t0.Before(winStart) {
					if err != nil {
						time.Sleep(10 * time.Millisecond) // don't spin on a refused connection
					}
					continue
				}
				// Rate-limited runs measure from the request's slot, not from
				// when a connection got free, so a stall is not hidden
				// (coordinated omission).
				from := t0
				if interval > 0 {
					from = due
					st.lateMax = max(st.lateMax, t0.Sub(due))
				}
				st.requests++
				st.bodyBytes += uint64(len(bd.data))
				switch {
				case err != nil:
					st.errs[errKind(err)]++
					time.Sleep(10 * time.Millisecond)
				case !ok:
					st.statuses[strconv.Itoa(resp.StatusCode())]++
				default:
					st.reqOK++
					st.eventsOK += uint64(bd.events)
					st.rawOK += uint64(bd.rawBytes)
					st.h.record(uint64(t1.Sub(from).Microseconds()))
				}
			}
		})
	}

	if c.progress > 0 {
		done := make(chan struct{})
		defer close(done)
		go func() {
			t := time.NewTicker(c.progress)
			defer t.Stop()
			for {
				select {
				case <-done:
					return
				case now := <-t.C:
					fmt.Fprintf(os.Stderr, "progress {\"t_ns\":%d,\"events_ok\":%d}\n", now.UnixNano(), totalOK.Load())
				}
			}
		}()
	}
	wg.Wait()
	winEnd := time.Unix(0, min(stopAt.Load(), deadline.UnixNano()))

	var h hist
	r := loadreport.Result{
		URL: c.url, Endpoint: c.endpoint, Conns: c.conns, Rate: c.rate,
		WindowStartNs: winStart.UnixNano(), WindowEndNs: winEnd.UnixNano(),
		Statuses: map[string]int{}, Errors: map[string]int{},
		TotalEventsOK: totalOK.Load(),
	}
	var late time.Duration
	for _, st := range stats {
		h.merge(&st.h)
		r.Requests += st.requests
		r.RequestsOK += st.reqOK
		r.EventsOK += st.eventsOK
		r.RawEventBytesOK += st.rawOK
		r.BodyBytesSent += st.bodyBytes
		late = max(late, st.lateMax)
		for k, v := range st.statuses {
			r.Statuses[k] += v
		}
		for k, v := range st.errs {
			r.Errors[k] += v
		}
	}
	r.WindowS = winEnd.Sub(winStart).Seconds()
	if r.WindowS > 0 {
		r.ReqPerS = float64(r.RequestsOK) / r.WindowS
		r.EventsPerS = float64(r.EventsOK) / r.WindowS
	}
	if r.EventsOK > 0 {
		r.EventBytesAvg = float64(r.RawEventBytesOK) / float64(r.EventsOK)
	}
	ms := func(us uint64) float64 { return float64(us) / 1000 }
	r.P50ms, r.P90ms, r.P99ms, r.MaxMs = ms(h.quantile(0.5)), ms(h.quantile(0.9)), ms(h.quantile(0.99)), ms(h.max)
	r.LateMaxMs = float64(late.Microseconds()) / 1000
	out, err := json.Marshal(r)
	if err != nil {
		return err
	}
	fmt.Println(string(out))
	var bad string
	if len(r.Statuses)+len(r.Errors) > 0 {
		bad = fmt.Sprintf("; non-200 %v, errors %v", r.Statuses, r.Errors)
	}
	fmt.Fprintf(os.Stderr, "loadgen %s%s conns=%d: %.0f req/s, %.0f events/s accepted over %.1fs; p50 %.2fms p90 %.2fms p99 %.2fms max %.2fms; %.0f B/event%s\n",
		c.url, c.endpoint, c.conns, r.ReqPerS, r.EventsPerS, r.WindowS, r.P50ms, r.P90ms, r.P99ms, r.MaxMs,
		r.EventBytesAvg, bad)
	return nil
}

func errKind(err error) string {
	switch {
	case errors.Is(err, fasthttp.ErrTimeout):
		return "timeout"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "conn_refused"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, fasthttp.ErrConnectionClosed):
		return "conn_reset"
	case errors.Is(err, fasthttp.ErrNoFreeConns):
		return "no_free_conns"
	}
	return "other"
}
