// Command sink is the destination side of scripts/bench. Modes:
//
//   - count: counts the events POSTed to it (a JSON array, NDJSON, a Segment
//     {"batch":[...]} body or one event; gzip accepted) and answers 200;
//   - null: answers 200 {"success":true} to everything without looking at
//     the body (the HTTP ceiling, standing in for spillway);
//   - fail: answers --status (503) to everything and counts the requests.
//
// The admin listener (always up) serves GET /count, POST /down (close the
// data listener: connections are refused), POST /up and POST /reset. GET
// /count is also served on the data listener. On start the sink prints one
// JSON line to stdout: {"addr":"127.0.0.1:P","admin":"127.0.0.1:Q"}.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fastjson"
)

type sink struct {
	mode   string
	status int

	events, requests, bodyBytes, badBodies atomic.Uint64
	firstNs, lastNs                        atomic.Int64

	mu   sync.Mutex // guards srv and ln: /down and /up
	addr string
	srv  *fasthttp.Server
	up   bool
}

// counts is the GET /count answer.
type counts struct {
	Events    uint64 `json:"events"`
	Requests  uint64 `json:"requests"`
	BodyBytes uint64 `json:"body_bytes"`
	BadBodies uint64 `json:"bad_bodies"`
	FirstNs   int64  `json:"first_ns"`
	LastNs    int64  `json:"last_ns"`
	NowNs     int64  `json:"now_ns"`
	Up        bool   `json:"up"`
}

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "data address")
	admin := flag.String("admin", "127.0.0.1:0", "admin address (always up)")
	mode := flag.String("mode", "count", "count, null or fail")
	status := flag.Int("status", 503, "status answered in fail mode")
	down := flag.Bool("down", false, "start with the data listener closed (POST /up opens it)")
	flag.Parse()
	log.SetFlags(0)
	log.SetPrefix("sink: ")
	switch *mode {
	case "count", "null", "fail":
	default:
		log.Fatalf("--mode must be count, null or fail, got %q", *mode)
	}

	s := &sink{mode: *mode, status: *status}
	// Bind the data address even when starting down, so the port is ours
	// and /up reopens the same one.
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	s.addr = ln.Addr().String()
	if *down {
		ln.Close()
	} else {
		s.serve(ln)
	}
	aln, err := net.Listen("tcp", *admin)
	if err != nil {
		log.Fatal(err)
	}
	asrv := &fasthttp.Server{Handler: s.adminHandler, Name: "bench-sink", NoDefaultDate: true}
	go asrv.Serve(aln) //nolint:errcheck // ends when the process does
	out, _ := json.Marshal(map[string]string{"addr": s.addr, "admin": aln.Addr().String()})
	fmt.Println(string(out))

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
}

func (s *sink) newServer() *fasthttp.Server {
	return &fasthttp.Server{
		Handler:               s.dataHandler,
		Name:                  "bench-sink",
		NoDefaultDate:         true,
		NoDefaultServerHeader: true,
		MaxRequestBodySize:    256 << 20,
		ReadBufferSize:        16 << 10,
		Concurrency:           1 << 16,
	}
}

func (s *sink) serve(ln net.Listener) {
	s.srv = s.newServer()
	s.up = true
	go s.srv.Serve(ln) //nolint:errcheck // ends at /down
}

func (s *sink) setUp(up bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if up == s.up {
		return nil
	}
	if !up {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		err := s.srv.ShutdownWithContext(ctx)
		s.up = false
		return err
	}
	ln, err := net.Listen("tcp", s.addr)
	if err != nil {
		return err
	}
	s.serve(ln)
	return nil
}

var success = []byte(`{"success":true}`)

func (s *sink) dataHandler(ctx *fasthttp.RequestCtx) {
	if ctx.IsGet() && string(ctx.Path()) == "/count" {
		s.writeCounts(ctx)
		return
	}
	switch s.mode {
	case "null":
		ctx.SetContentType("application/json")
		ctx.SetBody(success)
		return
	case "fail":
		s.requests.Add(1)
		ctx.SetStatusCode(s.status)
		return
	}
	body := ctx.PostBody()
	if bytes.Equal(ctx.Request.Header.ContentEncoding(), []byte("gzip")) {
		var err error
		if body, err = gunzip(body); err != nil {
			s.badBodies.Add(1)
			ctx.SetStatusCode(fasthttp.StatusBadRequest)
			return
		}
	}
	n, ok := countEvents(body, bytes.Contains(ctx.Request.Header.ContentType(), []byte("ndjson")))
	if !ok {
		s.badBodies.Add(1)
		ctx.SetStatusCode(fasthttp.StatusBadRequest)
		return
	}
	now := time.Now().UnixNano()
	s.firstNs.CompareAndSwap(0, now)
	s.lastNs.Store(now)
	s.events.Add(uint64(n))
	s.requests.Add(1)
	s.bodyBytes.Add(uint64(len(body)))
	ctx.SetContentType("application/json")
	ctx.SetBody(success)
}

func gunzip(b []byte) ([]byte, error) {
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		return nil, err
	}
	var out bytes.Buffer
	if _, err := out.ReadFrom(zr); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}

func (s *sink) adminHandler(ctx *fasthttp.RequestCtx) {
	var err error
	switch string(ctx.Path()) {
	case "/count":
		s.writeCounts(ctx)
		return
	case "/down":
		err = s.setUp(false)
	case "/up":
		err = s.setUp(true)
	case "/reset":
		s.events.Store(0)
		s.requests.Store(0)
		s.bodyBytes.Store(0)
		s.badBodies.Store(0)
		s.firstNs.Store(0)
		s.lastNs.Store(0)
	default:
		ctx.SetStatusCode(fasthttp.StatusNotFound)
		return
	}
	if err != nil {
		ctx.SetStatusCode(fasthttp.StatusInternalServerError)
		ctx.SetBodyString(err.Error())
		return
	}
	s.writeCounts(ctx)
}

func (s *sink) writeCounts(ctx *fasthttp.RequestCtx) {
	s.mu.Lock()
	up := s.up
	s.mu.Unlock()
	b, _ := json.Marshal(counts{
		Events: s.events.Load(), Requests: s.requests.Load(), BodyBytes: s.bodyBytes.Load(),
		BadBodies: s.badBodies.Load(), FirstNs: s.firstNs.Load(), LastNs: s.lastNs.Load(),
		NowNs: time.Now().UnixNano(), Up: up,
	})
	ctx.SetContentType("application/json")
	ctx.SetBody(b)
}

// countEvents counts the events in a body: the elements of a top-level JSON
// array, the lines of NDJSON, the "batch" of a Segment body, or 1 for a bare
// event object.
func countEvents(b []byte, ndjson bool) (int, bool) {
	b = bytes.TrimSpace(b)
	if len(b) == 0 {
		return 0, false
	}
	if ndjson {
		return countLines(b), true
	}
	switch b[0] {
	case '[':
		return countArray(b)
	case '{':
		if i := bytes.IndexByte(b, '\n'); i >= 0 && bytes.IndexByte(b[i:], '{') >= 0 {
			return countLines(b), true // NDJSON sent without its content type
		}
		v, err := fastjson.ParseBytes(b)
		if err != nil {
			return 0, false
		}
		if batch := v.GetArray("batch"); batch != nil {
			return len(batch), true
		}
		return 1, true
	}
	return 0, false
}

func countLines(b []byte) int {
	n := 0
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		line := b
		if i >= 0 {
			line, b = b[:i], b[i+1:]
		} else {
			b = nil
		}
		if len(bytes.TrimSpace(line)) > 0 {
			n++
		}
	}
	return n
}

// countArray counts the top-level elements of a JSON array without parsing
// them: it tracks nesting depth and skips strings with IndexByte, so it runs
// at memory speed on event-shaped JSON (mostly strings). It checks brackets
// and string termination, not the full grammar.
func countArray(b []byte) (int, bool) {
	depth, n, sawValue := 0, 0, false
	for i := 0; i < len(b); i++ {
		switch c := b[i]; c {
		case '"':
			j := i + 1
			for {
				k := bytes.IndexByte(b[j:], '"')
				if k < 0 {
					return 0, false
				}
				j += k
				bs := 0 // backslashes right before the quote
				for m := j - 1; m > i && b[m] == '\\'; m-- {
					bs++
				}
				if bs%2 == 0 {
					break
				}
				j++
			}
			i = j
			if depth == 1 {
				sawValue = true
			}
		case '[', '{':
			depth++
			if depth == 2 {
				sawValue = true
			}
		case ']', '}':
			depth--
			if depth < 0 {
				return 0, false
			}
			if depth == 0 {
				if i != len(b)-1 {
					return 0, false
				}
				if sawValue {
					n++
				}
				return n, true
			}
		case ',':
			if depth == 1 {
				n++
			}
		case ' ', '\t', '\r', '\n':
		default:
			if depth == 1 {
				sawValue = true
			}
		}
	}
	return 0, false
}
