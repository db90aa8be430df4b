// Package testkit holds what spillway's tests share: waiting for a
// condition (Eventually), capturing what goroutines write while a test
// reads it (Buffer), and a destination on loopback that records what it is
// sent (Sink).
//
// It is imported by tests only. Nothing in it fakes HTTP: a Sink is a real
// server on 127.0.0.1, so the tests that use it cover the transport too.
package testkit
