package testkit

import (
	"compress/gzip"
	"encoding/xml"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"
)

// S3 is an S3-compatible store on 127.0.0.1 (gofakes3, in memory), with
// one bucket. It records the access key of every request and lets a test
// answer requests with an S3 error instead.
type S3 struct {
	// Endpoint is host:port, for ?endpoint= with ?tls=false&path_style=true.
	Endpoint string
	Bucket   string
	backend  *s3mem.Backend

	mu      sync.Mutex
	fault   func(*http.Request) *S3Fault
	keys    map[string]int // access key IDs seen, by count
	puts    int
	answers map[int]int // faults answered, by status
}

// S3Fault is an S3 error answer.
type S3Fault struct {
	Status int
	Code   string // SlowDown, AccessDenied, ...
}

// The credentials StartS3 puts in the environment, where spillway's
// standard credential chain, in the test and in the processes it starts,
// finds them first.
const (
	S3AccessKey = "AKIDTESTARCHIVE"
	S3SecretKey = "secret-never-logged"
)

var credentialRE = regexp.MustCompile(`Credential=([^/]+)/`)

// StartS3 starts a store holding an empty bucket, and sets S3AccessKey
// and S3SecretKey as AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; it stops
// with the test.
func StartS3(t testing.TB, bucket string) *S3 {
	t.Helper()
	t.Setenv("AWS_ACCESS_KEY_ID", S3AccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", S3SecretKey)
	// The rest of the chain must not answer first on a developer's machine.
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
	backend := s3mem.New()
	if err := backend.CreateBucket(bucket); err != nil {
		t.Fatal(err)
	}
	s := &S3{Bucket: bucket, backend: backend, keys: map[string]int{}, answers: map[int]int{}}
	fake := gofakes3.New(backend, gofakes3.WithLogger(gofakes3.DiscardLog())).Server()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		if m := credentialRE.FindStringSubmatch(r.Header.Get("Authorization")); m != nil {
			s.keys[m[1]]++
		}
		var f *S3Fault
		if s.fault != nil {
			f = s.fault(r)
		}
		if f != nil {
			s.answers[f.Status]++
		} else if r.Method == http.MethodPut {
			s.puts++
		}
		s.mu.Unlock()
		if f != nil {
			_, _ = io.Copy(io.Discard, r.Body)
			w.Header().Set("Content-Type", "application/xml")
			w.WriteHeader(f.Status)
			_ = xml.NewEncoder(w).Encode(struct {
				XMLName xml.Name `xml:"Error"`
				Code    string
				Message string
			}{Code: f.Code, Message: "injected by the test"})
			return
		}
		fake.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	s.Endpoint = strings.TrimPrefix(srv.URL, "http://")
	return s
}

// SetFault answers each request for which f returns non-nil with that
// error; nil f answers every request normally again.
func (s *S3) SetFault(f func(*http.Request) *S3Fault) {
	s.mu.Lock()
	s.fault = f
	s.mu.Unlock()
}

// AccessKeys returns the access key IDs requests were signed with.
func (s *S3) AccessKeys() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for k := range s.keys {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// Puts counts the PUT requests answered normally.
func (s *S3) Puts() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.puts
}

// Faults counts the requests answered with an error of status.
func (s *S3) Faults(status int) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.answers[status]
}

// Keys lists the bucket's object names under prefix, in order.
func (s *S3) Keys(t testing.TB, prefix string) []string {
	t.Helper()
	list, err := s.backend.ListBucket(s.Bucket, &gofakes3.Prefix{Prefix: prefix, HasPrefix: true}, gofakes3.ListBucketPage{})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, c := range list.Contents {
		out = append(out, c.Key)
	}
	sort.Strings(out)
	return out
}

// Object returns an object's bytes as stored.
func (s *S3) Object(t testing.TB, key string) []byte {
	t.Helper()
	obj, err := s.backend.GetObject(s.Bucket, key, nil)
	if err != nil {
		t.Fatalf("get %s: %v", key, err)
	}
	defer obj.Contents.Close()
	b, err := io.ReadAll(obj.Contents)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Lines returns the lines of a gzip object, failing the test if it is not
// valid gzip.
func (s *S3) Lines(t testing.TB, key string) []string {
	t.Helper()
	zr, err := gzip.NewReader(strings.NewReader(string(s.Object(t, key))))
	if err != nil {
		t.Fatalf("%s: %v", key, err)
	}
	b, err := io.ReadAll(zr)
	if err != nil {
		t.Fatalf("%s: %v", key, err)
	}
	return strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
}
