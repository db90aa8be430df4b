package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// mode is how a sink answers.
type mode int32

const (
	healthy  mode = iota // 200; a flapping sink answers 400 to a batch holding a poison event
	slow                 // healthy, after 0.3 to 1.5 s (within spillway's timeout)
	failing              // 503
	hanging              // no answer for longer than spillway's timeout, then 503
	refusing             // listener closed: connections refused
	numModes
)

func (m mode) String() string {
	return [...]string{"healthy", "slow", "503", "hang", "refuse"}[m]
}

// flapTimeout is the flapping destination's request timeout (its URL's
// timeout=); hanging answers come after hangFor, beyond it.
const (
	flapTimeout = 2 * time.Second
	hangFor     = 3 * time.Second
)

// sink is a webhook destination that records the messageIds it accepts.
type sink struct {
	name         string
	addr         string
	rejectPoison bool

	delivered       bitset        // events accepted, each once
	received        atomic.Uint64 // events accepted, duplicates included
	requests        atomic.Uint64 // requests answered 200
	rejected        atomic.Uint64 // requests answered 400 for poison
	poisonDelivered atomic.Uint64 // poison events accepted (a flapping sink never does)
	unknown         atomic.Uint64 // events without a chaos messageId
	armedAt         atomic.Int64  // unix ns: record the first delivery after it
	firstAfter      atomic.Int64  // unix ns of that delivery, 0 until then

	mode atomic.Int32
	mu   sync.Mutex
	srv  *http.Server // nil while refusing
}

func newSink(name string, rejectPoison bool) (*sink, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &sink{name: name, addr: ln.Addr().String(), rejectPoison: rejectPoison}
	s.serve(ln)
	return s, nil
}

func (s *sink) url() string { return "http://" + s.addr + "/" }

func (s *sink) serve(ln net.Listener) {
	srv := &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}
	s.srv = srv
	go func() { _ = srv.Serve(ln) }()
}

// setMode switches how the sink answers; refusing closes the listener and
// every connection, and leaving it listens again on the same address.
func (s *sink) setMode(m mode) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.mode.Store(int32(m))
	switch {
	case m == refusing && s.srv != nil:
		err := s.srv.Close()
		s.srv = nil
		return err
	case m != refusing && s.srv == nil:
		var ln net.Listener
		var err error
		for range 50 { // the port may linger a moment after the close
			if ln, err = net.Listen("tcp", s.addr); err == nil {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err != nil {
			return fmt.Errorf("sink %s: listen again on %s: %w", s.name, s.addr, err)
		}
		s.serve(ln)
	}
	return nil
}

func (s *sink) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.srv != nil {
		_ = s.srv.Close()
		s.srv = nil
	}
}

// arm makes the sink note the time of its next delivery.
func (s *sink) arm(at time.Time) {
	s.firstAfter.Store(0)
	s.armedAt.Store(at.UnixNano())
}

func (s *sink) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	m := mode(s.mode.Load())
	switch m {
	case slow:
		d := 300*time.Millisecond + time.Duration(rand.Int64N(int64(1200*time.Millisecond)))
		if !sleepCtx(r.Context(), d) {
			return
		}
	case failing, refusing:
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	case hanging:
		sleepCtx(r.Context(), hangFor)
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, 16<<20))
	if err != nil {
		if !errors.Is(err, context.Canceled) {
			w.WriteHeader(http.StatusBadRequest)
		}
		return
	}
	var ids []uint64
	poison := 0
	unknown := parseIDs(body, func(n uint64, p bool) {
		ids = append(ids, n)
		if p {
			poison++
		}
	})
	if poison > 0 && s.rejectPoison {
		s.rejected.Add(1)
		http.Error(w, "poison event", http.StatusBadRequest)
		return
	}
	s.delivered.add(ids)
	s.received.Add(uint64(len(ids)))
	s.poisonDelivered.Add(uint64(poison))
	s.unknown.Add(uint64(unknown))
	s.requests.Add(1)
	now := time.Now().UnixNano()
	if a := s.armedAt.Load(); a != 0 && now > a && s.firstAfter.CompareAndSwap(0, now) {
		s.armedAt.Store(0)
	}
	w.WriteHeader(http.StatusOK)
}

// flapper drives the flapping sink through a seeded random schedule of
// modes, unless a mode is forced.
type flapper struct {
	s   *sink
	rng *rand.Rand

	mu      sync.Mutex
	forced  bool
	current mode
	since   time.Time
	time    [numModes]time.Duration // time spent in each mode
	phases  [numModes]int           // phases of the schedule, by mode
	errs    []error                 // from listening again
}

// weights of the modes in the schedule: healthy, slow, 503, hang, refuse.
var modeWeights = [numModes]int{35, 20, 15, 10, 20}

func (f *flapper) pick() (mode, time.Duration) {
	n := f.rng.IntN(100)
	m := healthy
	for i, w := range modeWeights {
		if n < w {
			m = mode(i)
			break
		}
		n -= w
	}
	return m, 2*time.Second + time.Duration(f.rng.Int64N(int64(10*time.Second)))
}

// switchTo sets the sink's mode, accounting the time spent in the last.
func (f *flapper) switchTo(m mode) {
	now := time.Now()
	if !f.since.IsZero() {
		f.time[f.current] += now.Sub(f.since)
	}
	f.current, f.since = m, now
	if err := f.s.setMode(m); err != nil {
		f.errs = append(f.errs, err)
	}
}

// force holds the sink in m until release.
func (f *flapper) force(m mode) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.forced = true
	f.switchTo(m)
}

// release lets the schedule drive the sink again from its next phase.
func (f *flapper) release() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.forced = false
}

// run flaps until ctx ends, then leaves the sink healthy. The schedule's
// draws do not depend on forcing, so a seed gives the same schedule.
func (f *flapper) run(ctx context.Context) {
	for {
		m, d := f.pick()
		f.mu.Lock()
		if !f.forced {
			f.phases[m]++
			f.switchTo(m)
		}
		f.mu.Unlock()
		if !sleepCtx(ctx, d) {
			break
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.forced = false
	f.switchTo(healthy)
}
