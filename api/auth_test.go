package api

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Tokens of the auth tests: an admin of every keyspace, a writer of ks, a reader of ks.
const (
	adminToken  = "admin-0123456789abcdef"
	writerToken = "writer-0123456789abcdef"
	readerToken = "reader-0123456789abcdef"
)

func authTokens() []Token {
	return []Token{
		{Name: "admin", Token: adminToken, Keyspaces: []string{"*"}, Access: "write"},
		{Name: "writer", Token: writerToken, Keyspaces: []string{"ks"}, Access: "write"},
		{Name: "reader", Token: readerToken, Keyspaces: []string{"ks"}, Access: "read"},
	}
}

func bearer(tok string) []string { return []string{"Authorization", "Bearer " + tok} }

func TestAuthUnauthenticated(t *testing.T) {
	e := newV1Env(t, func(c *Config) { c.Tokens = authTokens() })
	for _, tc := range []struct {
		name    string
		headers []string
		invalid bool
	}{
		{"no header", nil, false},
		{"unknown token", bearer("nobody-0123456789abcdef"), true},
		{"prefix of a token", bearer(adminToken[:10]), true},
		{"token with a suffix", bearer(adminToken + "x"), true},
		{"basic scheme", []string{"Authorization", "Basic YWRtaW46eA=="}, true},
		{"bearer without a token", []string{"Authorization", "Bearer "}, true},
	} {
		for _, path := range []string{"/v1/keyspaces", "/v1/keyspaces/ks/tables/users/rows/a", "/v1/openapi.json"} {
			r := e.call("GET", path, "", tc.headers...)
			expect(t, tc.name+" "+path, r, 401, codeUnauthenticated)
			wa := r.hdr.Get("WWW-Authenticate")
			if !strings.HasPrefix(wa, `Bearer realm="musicd"`) || strings.Contains(wa, "invalid_token") != tc.invalid {
				t.Errorf("%s %s: WWW-Authenticate %q", tc.name, path, wa)
			}
		}
	}
	if e.st.called("Keyspaces") || e.st.called("Table") {
		t.Error("an unauthenticated request reached the state")
	}
	// The scheme is case-insensitive (RFC 7235).
	expect(t, "lower-case bearer", e.call("GET", "/v1/keyspaces", "", "Authorization", "bearer "+adminToken), 200, "")
	// The operational endpoints need no token.
	for _, p := range []string{"/healthz", "/readyz", "/version", "/metrics"} {
		if r := e.call("GET", p, ""); r.code != 200 {
			t.Errorf("%s without a token: %d", p, r.code)
		}
	}
}

func TestAuthKeyspacesAndAccess(t *testing.T) {
	e := newV1Env(t, func(c *Config) { c.Tokens = authTokens() })
	row := "/v1/keyspaces/ks/tables/users/rows/a"
	otherRow := "/v1/keyspaces/other/tables/users/rows/a"
	put := `{"values":{"age":1}}`
	for _, tc := range []struct {
		token, method, path, body string
		code                      int
	}{
		// The reader reads ks, never writes, never sees other.
		{readerToken, "GET", "/v1/keyspaces/ks", "", 200},
		{readerToken, "GET", "/v1/keyspaces/ks/tables", "", 200},
		{readerToken, "GET", "/v1/keyspaces/ks/tables/users", "", 200},
		{readerToken, "GET", "/v1/keyspaces/ks/tables/users/rows", "", 200},
		{readerToken, "GET", row, "", 404},
		{readerToken, "GET", "/v1/keyspaces/ks/tables/users/locks/a", "", 200},
		{readerToken, "POST", "/v1/keyspaces/ks/tables/users/locks/a", `{"type":"read"}`, 201},
		{readerToken, "POST", "/v1/keyspaces/ks/tables/users/locks/a", `{"type":"write"}`, 403},
		{readerToken, "PUT", row, put, 403},
		{readerToken, "PATCH", row, put, 403},
		{readerToken, "DELETE", row, "", 403},
		{readerToken, "POST", "/v1/keyspaces/ks/tables/users/rows", `{"values":{"name":"a"}}`, 403},
		{readerToken, "POST", "/v1/keyspaces", `{"name":"ks"}`, 403},
		{readerToken, "DELETE", "/v1/keyspaces/ks", "", 403},
		{readerToken, "POST", "/v1/keyspaces/ks/tables", `{"name":"t"}`, 403},
		{readerToken, "DELETE", "/v1/keyspaces/ks/tables/users", "", 403},
		{readerToken, "GET", "/v1/keyspaces/other", "", 403},
		{readerToken, "GET", otherRow, "", 403},
		{readerToken, "GET", "/v1/keyspaces/other/tables/users/rows", "", 403},
		// Forbidden comes before not found: a token learns nothing of keyspaces it may not use.
		{readerToken, "GET", "/v1/keyspaces/secret", "", 403},
		{readerToken, "GET", "/v1/openapi.json", "", 200},
		// The writer writes ks only.
		{writerToken, "PUT", row, put, 200},
		{writerToken, "PUT", otherRow, put, 403},
		{writerToken, "POST", "/v1/keyspaces", `{"name":"newks"}`, 403},
		{writerToken, "POST", "/v1/keyspaces/ks/tables", `{"name":"t2","columns":[{"name":"a","type":"int"},{"name":"b","type":"int"}],"partition_key":["a"]}`, 201},
		{writerToken, "DELETE", "/v1/keyspaces/ks/tables/t2", "", 204},
		// The admin does everything.
		{adminToken, "PUT", otherRow, put, 200},
		{adminToken, "POST", "/v1/keyspaces", `{"name":"newks"}`, 201},
		{adminToken, "DELETE", "/v1/keyspaces/newks", "", 204},
	} {
		r := e.call(tc.method, tc.path, tc.body, bearer(tc.token)...)
		want := ""
		if tc.code == 403 {
			want = codeForbidden
		}
		expect(t, tc.token[:6]+" "+tc.method+" "+tc.path+" "+tc.body, r, tc.code, want)
	}
}

func TestAuthListsAllowedKeyspacesOnly(t *testing.T) {
	e := newV1Env(t, func(c *Config) { c.Tokens = authTokens() })
	for _, tc := range []struct {
		token string
		want  []string
	}{
		{adminToken, []string{"ks", "other"}},
		{readerToken, []string{"ks"}},
	} {
		r := e.call("GET", "/v1/keyspaces", "", bearer(tc.token)...)
		expect(t, "list", r, 200, "")
		var list keyspacesBody
		r.decode(t, &list)
		var got []string
		for _, ks := range list.Keyspaces {
			got = append(got, ks.Name)
		}
		if strings.Join(got, ",") != strings.Join(tc.want, ",") {
			t.Errorf("%s lists %v, want %v", tc.token[:6], got, tc.want)
		}
	}
	// A token of no existing keyspace gets an empty list, not null.
	e = newV1Env(t, func(c *Config) {
		c.Tokens = []Token{{Name: "lonely", Token: "lonely-0123456789abcdef", Keyspaces: []string{"nothing"}, Access: "read"}}
	})
	r := e.call("GET", "/v1/keyspaces", "", bearer("lonely-0123456789abcdef")...)
	if !strings.Contains(r.body, `"keyspaces": []`) {
		t.Errorf("empty list: %s", r.body)
	}
}

// A lock reference names its keyspace: the lock calls are authorized on it.
func TestAuthLockReferences(t *testing.T) {
	e := newV1Env(t, func(c *Config) { c.Tokens = authTokens() })
	r := e.call("POST", "/v1/keyspaces/other/tables/users/locks/a", "", bearer(adminToken)...)
	expect(t, "admin creates a lock in other", r, 201, "")
	var other lockRefJSON
	r.decode(t, &other)
	r = e.call("POST", "/v1/keyspaces/ks/tables/users/locks/a", `{"type":"read"}`, bearer(readerToken)...)
	expect(t, "reader creates a read lock in ks", r, 201, "")
	var mine lockRefJSON
	r.decode(t, &mine)

	for _, tc := range []struct {
		token, method, path string
		code                int
	}{
		{writerToken, "POST", "/v1/locks/" + string(other.Ref) + "/acquire", 403},
		{writerToken, "POST", "/v1/locks/" + string(other.Ref) + "/renew", 403},
		{writerToken, "DELETE", "/v1/locks/" + string(other.Ref), 403},
		{writerToken, "DELETE", "/v1/locks/" + string(other.Ref) + "?force=true", 403},
		{readerToken, "POST", "/v1/locks/" + string(mine.Ref) + "/acquire", 200},
		{readerToken, "POST", "/v1/locks/" + string(mine.Ref) + "/renew", 204},
		// Forcing a reference out is a write.
		{readerToken, "DELETE", "/v1/locks/" + string(mine.Ref) + "?force=true", 403},
		{readerToken, "DELETE", "/v1/locks/" + string(mine.Ref), 204},
		{adminToken, "DELETE", "/v1/locks/" + string(other.Ref) + "?force=true", 204},
	} {
		want := ""
		if tc.code == 403 {
			want = codeForbidden
		}
		expect(t, tc.token[:6]+" "+tc.method+" "+tc.path, e.call(tc.method, tc.path, "", bearer(tc.token)...), tc.code, want)
	}
	// A critical operation with a lock reference still needs write access to write.
	expect(t, "reader critical put", e.call("PUT", "/v1/keyspaces/ks/tables/users/rows/a?consistency=critical&lock="+string(mine.Ref),
		`{"values":{}}`, bearer(readerToken)...), 403, codeForbidden)
}

// Every configured token is compared, in constant time, whichever matches: the time to answer
// does not tell which token (or how much of one) was right.
func TestAuthComparesEveryTokenInConstantTime(t *testing.T) {
	a := newAuthenticator(authTokens())
	if reflect.ValueOf(a.equal).Pointer() != reflect.ValueOf(subtle.ConstantTimeCompare).Pointer() {
		t.Fatal("the authenticator does not compare with subtle.ConstantTimeCompare")
	}
	var compared int
	var lengths []int
	a.equal = func(x, y []byte) int {
		compared++
		lengths = append(lengths, len(x), len(y))
		return subtle.ConstantTimeCompare(x, y)
	}
	for _, tok := range []string{adminToken, readerToken, "short", strings.Repeat("long", 100)} {
		compared, lengths = 0, nil
		r := httptest.NewRequest("GET", "/v1/keyspaces", nil)
		r.Header.Set("Authorization", "Bearer "+tok)
		_, _ = a.authenticate(r)
		if compared != len(authTokens()) {
			t.Errorf("token %.6s: %d comparisons, want %d", tok, compared, len(authTokens()))
		}
		for _, n := range lengths {
			if n != 32 {
				t.Errorf("token %.6s: compared %d bytes, not digests of a fixed length", tok, n)
			}
		}
	}
}

func TestTokenConfigValidate(t *testing.T) {
	secret := "s3cret-0123456789abcdef"
	ok := Token{Name: "app", Token: secret, Keyspaces: []string{"ks"}, Access: "read"}
	for _, tc := range []struct {
		name   string
		tokens []Token
		want   string
	}{
		{"no name", []Token{{Token: secret, Keyspaces: []string{"ks"}, Access: "read"}}, "tokens[0]: name"},
		{"short", []Token{{Name: "a", Token: "short", Keyspaces: []string{"ks"}, Access: "read"}}, "tokens[0]: token: shorter than 16"},
		{"space", []Token{{Name: "a", Token: "has space 0123456789", Keyspaces: []string{"ks"}, Access: "read"}}, "tokens[0]: token: only visible"},
		{"no keyspaces", []Token{{Name: "a", Token: secret, Access: "read"}}, "tokens[0]: keyspaces"},
		{"bad keyspace", []Token{{Name: "a", Token: secret, Keyspaces: []string{"Bad"}, Access: "read"}}, "tokens[0]: keyspaces"},
		{"bad access", []Token{{Name: "a", Token: secret, Keyspaces: []string{"ks"}, Access: "admin"}}, "tokens[0]: access"},
		{"no access", []Token{{Name: "a", Token: secret, Keyspaces: []string{"ks"}}}, "tokens[0]: access"},
		{"same name", []Token{ok, {Name: "app", Token: secret + "x", Keyspaces: []string{"*"}, Access: "write"}}, "tokens[1].name"},
		{"same token", []Token{ok, {Name: "app2", Token: secret, Keyspaces: []string{"*"}, Access: "write"}}, "tokens[1].token"},
	} {
		c := DefaultConfig()
		c.Tokens = tc.tokens
		err := c.Validate()
		if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
			continue
		}
		if strings.Contains(err.Error(), secret) {
			t.Errorf("%s: the error shows the secret: %v", tc.name, err)
		}
	}
	c := DefaultConfig()
	c.Tokens = []Token{ok, {Name: "all", Token: "all-0123456789abcdef", Keyspaces: []string{"*"}, Access: "write"}}
	if err := c.Validate(); err != nil {
		t.Errorf("valid tokens: %v", err)
	}
	// The secret is tagged so that nothing prints it.
	f, _ := reflect.TypeFor[Token]().FieldByName("Token")
	if f.Tag.Get("secret") != "true" {
		t.Error("Token.Token is not tagged secret")
	}
}

// The lock wait a request may ask for leaves time to write its answer.
func TestEffectiveMaxWait(t *testing.T) {
	c := DefaultConfig()
	if got := c.effectiveMaxWait(); got != c.MaxWait {
		t.Errorf("defaults: %s, want max_wait %s", got, c.MaxWait)
	}
	c.WriteTimeout = 12 * time.Second
	if got := c.effectiveMaxWait(); got != time.Second {
		t.Errorf("write_timeout 12s, request_timeout 10s: %s, want 1s", got)
	}
	c.WriteTimeout = 10500 * time.Millisecond
	if got := c.effectiveMaxWait(); got != 0 {
		t.Errorf("no room: %s", got)
	}
	e := newV1Env(t, func(c *Config) { c.WriteTimeout = 15 * time.Second })
	r := e.call("PUT", "/v1/keyspaces/ks/tables/users/rows/a?consistency=atomic&wait=5s", `{"values":{}}`)
	expect(t, "wait beyond write_timeout", r, 400, codeInvalid)
	if !strings.Contains(r.msg(), "4s allowed") {
		t.Errorf("message: %s", r.msg())
	}
}

func TestV1ConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		set  func(*Config)
		want string
	}{
		{"body limit", func(c *Config) { c.MaxBodyBytes = 0 }, "max_body_bytes:"},
		{"body limit too large", func(c *Config) { c.MaxBodyBytes = 1 << 30 }, "max_body_bytes:"},
		{"request timeout", func(c *Config) { c.RequestTimeout = 0 }, "request_timeout:"},
		{"max wait", func(c *Config) { c.MaxWait = -time.Second }, "max_wait:"},
		{"write timeout too short", func(c *Config) { c.WriteTimeout = 10 * time.Second }, "request_timeout:"},
		{"cert without key", func(c *Config) { c.TLSCertFile = "x.pem" }, "tls_cert_file:"},
		{"key without cert", func(c *Config) { c.TLSKeyFile = "x.pem" }, "tls_cert_file:"},
		{"missing cert file", func(c *Config) { c.TLSCertFile, c.TLSKeyFile = "/nonexistent/cert.pem", "/nonexistent/key.pem" }, "tls_cert_file:"},
	} {
		c := DefaultConfig()
		tc.set(&c)
		if err := c.Validate(); err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
}

// ---- TLS ----

// writeCert makes a self-signed certificate for 127.0.0.1 and writes it and its key as PEM
// files; it returns their paths and the certificate.
func writeCert(t *testing.T, dir, name string) (certFile, keyFile string, cert *x509.Certificate) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "musicd test " + name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err = x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile, cert
}

func TestTLSConfigValidate(t *testing.T) {
	dir := t.TempDir()
	certA, keyA, _ := writeCert(t, dir, "a")
	_, keyB, _ := writeCert(t, dir, "b")
	garbage := filepath.Join(dir, "garbage.pem")
	if err := os.WriteFile(garbage, []byte("not pem"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, cert, key, want string
	}{
		{"valid pair", certA, keyA, ""},
		{"mismatched pair", certA, keyB, "not a valid certificate and key pair"},
		{"missing key file", certA, filepath.Join(dir, "none.key"), "tls_key_file:"},
		{"not PEM", garbage, keyA, "not a valid certificate and key pair"},
	} {
		c := DefaultConfig()
		c.TLSCertFile, c.TLSKeyFile = tc.cert, tc.key
		err := c.Validate()
		if (tc.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
}

// With a certificate and key the listener serves HTTPS, on a real connection, and refuses
// plain HTTP.
func TestTLSServes(t *testing.T) {
	certFile, keyFile, cert := writeCert(t, t.TempDir(), "server")
	cfg := DefaultConfig()
	cfg.TLSCertFile, cfg.TLSKeyFile = certFile, keyFile
	cfg.Tokens = authTokens()
	s, err := NewServer(cfg, Deps{
		Logger:   slog.New(slog.NewTextHandler(io.Discard, nil)),
		Registry: prometheus.NewRegistry(),
		State:    newFakeState(),
	})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve(ln) }()
	defer func() {
		if err := s.Shutdown(context.Background()); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()

	pool := x509.NewCertPool()
	pool.AddCert(cert)
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	base := "https://" + ln.Addr().String()

	resp, err := client.Get(base + "/healthz")
	if err != nil {
		t.Fatalf("HTTPS GET: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.TLS == nil || resp.TLS.Version < tls.VersionTLS12 {
		t.Errorf("HTTPS healthz: %d %+v", resp.StatusCode, resp.TLS)
	}
	req, _ := http.NewRequest("GET", base+"/v1/keyspaces", nil)
	req.Header.Set("Authorization", "Bearer "+adminToken)
	resp, err = client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("HTTPS /v1/keyspaces: %d", resp.StatusCode)
	}

	// A client that does not trust the certificate fails the handshake.
	untrusting := &http.Client{Transport: &http.Transport{}, Timeout: 10 * time.Second}
	if _, err := untrusting.Get(base + "/healthz"); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("untrusted certificate: %v", err)
	}
	// Plain HTTP on the TLS port gets the server's "client sent an HTTP request to an HTTPS
	// server" 400, never a page.
	plain := &http.Client{Transport: &http.Transport{}, Timeout: 10 * time.Second}
	resp, err = plain.Get("http://" + ln.Addr().String() + "/healthz")
	if err == nil {
		resp.Body.Close()
		if resp.StatusCode != 400 {
			t.Errorf("plain HTTP to the TLS listener: %d", resp.StatusCode)
		}
	}
}
