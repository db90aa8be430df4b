package testkit

import (
	"fmt"
	"testing"
	"time"
)

// Patience is how long Eventually waits before it gives up. It bounds a
// test that would otherwise hang, and is no statement about how fast
// anything should be: a condition that holds at all holds long before it
// on any machine, and a test that needs a speed checks a count or an
// order instead.
var Patience = time.Minute

// pollEvery is how often Eventually looks again.
const pollEvery = 5 * time.Millisecond

// Eventually polls cond until it holds, and fails t with the message
// (format and args, as for fmt.Sprintf) when it has not within Patience.
// Args are formatted at the failure, so an argument that is a fmt.Stringer
// or a func() any shows the state the test gave up in, not the state at
// the call.
//
// Inside a testing/synctest bubble its sleeps advance the bubble's clock,
// so it returns as soon as the other goroutines have made cond true.
func Eventually(t testing.TB, cond func() bool, format string, args ...any) {
	t.Helper()
	deadline := time.Now().Add(Patience)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %v: %s", Patience, fmt.Sprintf(format, lazy(args)...))
		}
		time.Sleep(pollEvery)
	}
}

// lazy calls the func() any among args.
func lazy(args []any) []any {
	out := make([]any, len(args))
	for i, a := range args {
		if f, ok := a.(func() any); ok {
			a = f()
		}
		out[i] = a
	}
	return out
}
