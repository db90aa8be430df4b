package testkit

import (
	"bufio"
	"bytes"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/klauspost/compress/gzip"
)

// Answer is what a Sink does with one request.
type Answer struct {
	Status int // 0 means 200
	Header http.Header
	Body   string
	// Hang holds the request until the client gives up or the sink is
	// closed; it is then recorded as answered 504.
	Hang bool
	// Reset drops the connection with a TCP reset, answering nothing.
	Reset bool
}

// AnswerFunc decides the answer to the n-th request (from 0), once its
// body is decoded.
type AnswerFunc func(n int, r *Request) Answer

// FirstN answers the first n requests with a and the others with 200.
func FirstN(n int, a Answer) AnswerFunc {
	return func(i int, _ *Request) Answer {
		if i < n {
			return a
		}
		return Answer{}
	}
}

// Request is one request a Sink received.
type Request struct {
	At   time.Time // when it came
	Done time.Time // when it was answered, before the answer was written

	Method      string
	URI         string // path and query, as sent
	ContentType string
	Gzip        bool   // it came with Content-Encoding: gzip
	User        string // the Basic auth user: Segment's API takes the write key there
	Bytes       int    // of the body as sent

	// Events are the body's events, whatever its shape: a JSON array, a
	// Segment batch ({"batch":[...],"sentAt":...}) or one event a line,
	// gzipped or not. IDs are their messageIds, in order.
	Events []json.RawMessage
	IDs    []string
	SentAt string // a Segment batch's sentAt

	Status int // the answer's; 0 for a reset connection
}

// Sink is a destination on loopback that decodes and records every request
// and answers each as its AnswerFunc says. The events of the requests
// answered with a 2xx count as delivered, by messageId.
type Sink struct {
	URL string

	t       testing.TB
	srv     *httptest.Server
	answer  AnswerFunc
	release chan struct{} // closed when the sink closes, ending every Hang

	mu        sync.Mutex
	reqs      []*Request
	delivered map[string]delivery // by messageId: the latest copy
	order     []string            // messageIds in the order they were delivered
	total     int                 // events delivered, copies included
}

type delivery struct {
	event json.RawMessage
	req   *Request
}

// NewSink starts a sink on 127.0.0.1 over HTTP, closed when t ends. A nil
// answer answers 200 to everything.
func NewSink(t testing.TB, answer AnswerFunc) *Sink {
	return startSink(t, answer, false)
}

// NewTLSSink is NewSink over HTTPS, with a self-signed certificate that
// no system trusts: CertificatePEM gives it, for a client to trust.
func NewTLSSink(t testing.TB, answer AnswerFunc) *Sink {
	return startSink(t, answer, true)
}

func startSink(t testing.TB, answer AnswerFunc, tls bool) *Sink {
	t.Helper()
	if answer == nil {
		answer = func(int, *Request) Answer { return Answer{} }
	}
	s := &Sink{t: t, answer: answer, release: make(chan struct{}), delivered: map[string]delivery{}}
	s.srv = httptest.NewUnstartedServer(http.HandlerFunc(s.serve))
	if tls {
		s.srv.StartTLS()
	} else {
		s.srv.Start()
	}
	s.URL = s.srv.URL
	t.Cleanup(func() {
		close(s.release)
		s.srv.Close()
	})
	return s
}

// CertificatePEM is the TLS sink's certificate, PEM-encoded.
func (s *Sink) CertificatePEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: s.srv.Certificate().Raw})
}

func (s *Sink) serve(w http.ResponseWriter, r *http.Request) {
	raw, err := io.ReadAll(r.Body)
	if err != nil {
		// The client went away mid-request (a test killed it): nothing
		// was sent, and nobody waits for an answer.
		return
	}
	req, err := readRequest(r, raw)
	if err != nil {
		s.t.Errorf("sink: %s %s: %v", r.Method, r.RequestURI, err)
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	s.mu.Lock()
	n := len(s.reqs)
	s.reqs = append(s.reqs, req)
	s.mu.Unlock()

	a := s.answer(n, req)
	if a.Status == 0 {
		a.Status = http.StatusOK
	}
	switch {
	case a.Hang:
		select {
		case <-r.Context().Done():
		case <-s.release:
		}
		a.Status = http.StatusGatewayTimeout
	case a.Reset:
		a.Status = 0
	}
	s.settle(req, a.Status)
	if a.Reset {
		reset(w)
		return
	}
	for k, v := range a.Header {
		w.Header()[k] = v
	}
	w.WriteHeader(a.Status)
	_, _ = io.WriteString(w, a.Body)
}

// settle records the answer, and the events it delivered.
func (s *Sink) settle(req *Request, status int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	req.Status, req.Done = status, time.Now()
	if status < 200 || status > 299 {
		return
	}
	for i, id := range req.IDs {
		s.delivered[id] = delivery{event: req.Events[i], req: req}
		s.order = append(s.order, id)
		s.total++
	}
}

// reset closes the connection with a TCP RST.
func reset(w http.ResponseWriter) {
	conn, _, err := w.(http.Hijacker).Hijack()
	if err != nil {
		return
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = conn.Close()
}

func readRequest(r *http.Request, raw []byte) (*Request, error) {
	var err error
	req := &Request{At: time.Now(), Method: r.Method, URI: r.RequestURI, ContentType: r.Header.Get("Content-Type"),
		Bytes: len(raw)}
	req.User, _, _ = r.BasicAuth()
	body := raw
	if r.Header.Get("Content-Encoding") == "gzip" {
		req.Gzip = true
		if body, err = gunzip(raw); err != nil {
			return nil, fmt.Errorf("gunzip: %w", err)
		}
	}
	if req.Events, req.SentAt, err = DecodeEvents(body); err != nil {
		return nil, fmt.Errorf("decode %q: %w", body, err)
	}
	for _, e := range req.Events {
		req.IDs = append(req.IDs, MessageID(e))
	}
	return req, nil
}

func gunzip(b []byte) ([]byte, error) {
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		return nil, err
	}
	return io.ReadAll(zr)
}

// DecodeEvents reads the events of a body in any shape spillway sends: a
// JSON array, a Segment batch (whose sentAt it returns too) or one event a
// line.
func DecodeEvents(body []byte) (events []json.RawMessage, sentAt string, err error) {
	trimmed := bytes.TrimSpace(body)
	switch {
	case bytes.HasPrefix(trimmed, []byte(`[`)):
		err = json.Unmarshal(trimmed, &events)
		return events, "", err
	case bytes.HasPrefix(trimmed, []byte(`{"batch"`)):
		var b struct {
			Batch  []json.RawMessage `json:"batch"`
			SentAt string            `json:"sentAt"`
		}
		err = json.Unmarshal(trimmed, &b)
		return b.Batch, b.SentAt, err
	}
	events, err = DecodeLines(trimmed)
	return events, "", err
}

// DecodeLines reads one JSON event a line, as a file:// or stdout://
// destination writes them.
func DecodeLines(b []byte) ([]json.RawMessage, error) {
	var events []json.RawMessage
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if !json.Valid(sc.Bytes()) {
			return nil, fmt.Errorf("line %q is not JSON", sc.Bytes())
		}
		events = append(events, json.RawMessage(slices.Clone(sc.Bytes())))
	}
	return events, sc.Err()
}

// MessageID is an event's messageId; empty when it has none or is not JSON.
func MessageID(event []byte) string {
	var e struct {
		MessageID string `json:"messageId"`
	}
	_ = json.Unmarshal(event, &e)
	return e.MessageID
}

// Requests returns a copy of every request received so far, in order.
func (s *Sink) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Request, len(s.reqs))
	for i, r := range s.reqs {
		out[i] = *r
	}
	return out
}

// Counts returns how many distinct events (by messageId) were delivered,
// and how many copies in all.
func (s *Sink) Counts() (unique, total int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.delivered), s.total
}

// Delivered returns the messageIds delivered, each once, sorted.
func (s *Sink) Delivered() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]string, 0, len(s.delivered))
	for id := range s.delivered {
		out = append(out, id)
	}
	slices.Sort(out)
	return out
}

// Order returns the messageIds in the order they were delivered, copies
// included.
func (s *Sink) Order() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.order)
}

// Duplicates returns "ID xN" for each messageId delivered more than once.
func (s *Sink) Duplicates() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := map[string]int{}
	for _, id := range s.order {
		n[id]++
	}
	var out []string
	for id, k := range n {
		if k > 1 {
			out = append(out, fmt.Sprintf("%s x%d", id, k))
		}
	}
	slices.Sort(out)
	return out
}

// Has reports whether the event with messageId id was delivered.
func (s *Sink) Has(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.delivered[id]
	return ok
}

// Event returns the last delivered copy of the event with messageId id,
// decoded, and the request that delivered it (its User is the write key
// it came under, its SentAt the batch's); ok is false when none was.
func (s *Sink) Event(id string) (event map[string]any, by Request, ok bool) {
	s.mu.Lock()
	d, ok := s.delivered[id]
	if ok {
		by = *d.req
	}
	s.mu.Unlock()
	if !ok {
		return nil, Request{}, false
	}
	if err := json.Unmarshal(d.event, &event); err != nil {
		s.t.Errorf("sink: event %s: %v", id, err)
	}
	return event, by, true
}
