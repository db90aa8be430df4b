//go:build !race

package proxy

import (
	"fmt"
	"io"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"
)

// TestIdleKeepAliveConnectionsHoldMemoryFlat opens many idle keep-alive
// connections, each after one request, and bounds what each costs the
// process. scripts/hostile measures a real process with 5,000.
func TestIdleKeepAliveConnectionsHoldMemoryFlat(t *testing.T) {
	if testing.Short() {
		t.Skip("opens 1,000 connections")
	}
	const conns = 1000
	h := newHarness(t, DefaultConfig())
	body := `{"userId":"u","event":"e","properties":{"p":"` + strings.Repeat("x", 2000) + `"}}`
	request := fmt.Sprintf("POST /v1/track HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s", len(body), body)

	inUse := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapInuse + m.StackInuse
	}
	// Warm the pools and the first connections' costs up.
	warm := dialRaw(t, h)
	io.WriteString(warm, request)
	warm.answer(t)
	before := inUse()
	open := make([]*rawConn, 0, conns)
	for range conns {
		c := dialRaw(t, h)
		io.WriteString(c, request)
		if status, _, b := c.answer(t); status != http.StatusOK {
			t.Fatalf("status %d: %s", status, b)
		}
		open = append(open, c)
	}
	// What is left is the served connection's goroutine (an 8 KiB stack),
	// its socket and bookkeeping (~3 KiB), our client's socket and 4 KiB
	// reader, and fasthttp's 8 KiB read buffer: the handler reads event
	// bodies itself (takeBody), and fasthttp then keeps that buffer with
	// the connection. Its 4 KiB write buffer and its request context go
	// back to their pools while the connection is idle
	// (ReduceMemoryUsage); holding them too cost 34 KiB a connection.
	// Each connection goes idle a moment after its answer, so the cost is
	// measured again until it is in budget or the test runs out of
	// patience.
	const budget = 30 << 10
	deadline := time.Now().Add(patience(t))
	for {
		per := (int64(inUse()) - int64(before)) / conns
		if per <= budget {
			t.Logf("%d idle keep-alive connections: %d bytes each (heap and stacks, client side included)", conns, per)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("an idle keep-alive connection costs %d bytes, want < %d KiB", per, budget>>10)
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, c := range open {
		c.Close()
	}
}
