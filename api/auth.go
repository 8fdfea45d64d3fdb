package api

import (
	"crypto/sha256"
	"crypto/subtle"
	"net/http"
	"slices"
	"strings"

	"github.com/musicd/musicd/state"
)

// Access levels of a token.
const (
	accessRead  = "read"
	accessWrite = "write"
)

// validKeyspaceName checks a keyspace name of a token's configuration.
func validKeyspaceName(name string) error { return state.ValidateIdentifier("keyspace", name) }

// authenticator checks the bearer tokens of /v1 requests. It is immutable after newAuthenticator
// and safe for concurrent use.
type authenticator struct {
	tokens []tokenEntry
	// equal compares two SHA-256 digests. It is subtle.ConstantTimeCompare in production; tests
	// replace it to observe that every configured token is compared, match or not.
	equal func(a, b []byte) int
}

// tokenEntry is a configured token as the authenticator keeps it: the secret only as its digest.
type tokenEntry struct {
	digest [sha256.Size]byte
	p      principal
}

// principal is who made a request and what it may do. The zero principal (authentication off)
// may do everything.
type principal struct {
	// name of the token; "" when authentication is off.
	name      string
	all       bool // every keyspace
	keyspaces []string
	write     bool
}

// newAuthenticator keeps the digests of the configured tokens; nil tokens turn authentication
// off.
func newAuthenticator(tokens []Token) *authenticator {
	a := &authenticator{equal: subtle.ConstantTimeCompare}
	for _, t := range tokens {
		a.tokens = append(a.tokens, tokenEntry{
			digest: sha256.Sum256([]byte(t.Token)),
			p: principal{
				name:      t.Name,
				all:       slices.Contains(t.Keyspaces, "*"),
				keyspaces: slices.Clone(t.Keyspaces),
				write:     t.Access == accessWrite,
			},
		})
	}
	return a
}

func (a *authenticator) enabled() bool { return len(a.tokens) > 0 }

// authenticate returns the principal of r's bearer token, or an unauthenticated error (which
// makes the response carry WWW-Authenticate). With authentication off it returns the open
// principal.
//
// The presented token is hashed and its digest compared with every configured digest in
// constant time, without stopping at a match, so neither the length nor the content of a
// configured token, nor which one matched, shows in the response time.
func (a *authenticator) authenticate(r *http.Request) (principal, error) {
	if !a.enabled() {
		return principal{all: true, write: true}, nil
	}
	h := r.Header.Get("Authorization")
	scheme, tok, ok := strings.Cut(h, " ")
	if h == "" {
		return principal{}, &apiError{status: http.StatusUnauthorized, code: codeUnauthenticated, msg: "this endpoint needs Authorization: Bearer <token>"}
	}
	if !ok || !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(tok) == "" {
		return principal{}, &apiError{status: http.StatusUnauthorized, code: codeUnauthenticated, msg: "Authorization must be Bearer <token>", invalidToken: true}
	}
	return a.lookup(strings.TrimSpace(tok))
}

// lookup returns the principal of a presented token. The token is hashed and its digest
// compared with every configured digest in constant time (see authenticate).
func (a *authenticator) lookup(tok string) (principal, error) {
	d := sha256.Sum256([]byte(tok))
	found := -1
	for i := range a.tokens {
		if a.equal(d[:], a.tokens[i].digest[:]) == 1 {
			found = i
		}
	}
	if found < 0 {
		return principal{}, &apiError{status: http.StatusUnauthorized, code: codeUnauthenticated, msg: "unknown bearer token", invalidToken: true}
	}
	return a.tokens[found].p, nil
}

// canRead reports whether p may read keyspace ks.
func (p principal) canRead(ks string) bool {
	return p.all || slices.Contains(p.keyspaces, ks)
}

// canWrite reports whether p may change keyspace ks (or its tables, rows and locks).
func (p principal) canWrite(ks string) bool { return p.write && p.canRead(ks) }

// authorize returns nil if p may use keyspace ks with the given access, or a forbidden error.
func (p principal) authorize(ks string, write bool) error {
	if !p.canRead(ks) {
		return &apiError{status: http.StatusForbidden, code: codeForbidden, msg: "token " + p.name + " may not use keyspace " + ks}
	}
	if write && !p.write {
		return &apiError{status: http.StatusForbidden, code: codeForbidden, msg: "token " + p.name + " is read-only"}
	}
	return nil
}

// authenticateMusic authenticates a request of the MUSIC v2 API. MUSIC clients send HTTP basic
// credentials: the password is taken as one of the configured tokens, and the user name, when
// not empty, must be that token's name. "Authorization: Bearer <token>" works too. MUSIC's aid
// and ns headers (its own onboarding of applications) are not read. With authentication off
// every request is let through, whatever it sends.
func (a *authenticator) authenticateMusic(r *http.Request) (principal, error) {
	if !a.enabled() {
		return principal{all: true, write: true}, nil
	}
	user, pass, ok := r.BasicAuth()
	if !ok {
		if r.Header.Get("Authorization") == "" {
			return principal{}, &apiError{status: http.StatusUnauthorized, code: codeUnauthenticated,
				msg: "this endpoint needs HTTP basic credentials (user: the token's name, password: the token) or Authorization: Bearer <token>"}
		}
		return a.authenticate(r)
	}
	p, err := a.lookup(pass)
	if err != nil {
		return principal{}, &apiError{status: http.StatusUnauthorized, code: codeUnauthenticated, msg: "unknown credentials", invalidToken: true}
	}
	if user != "" && user != p.name {
		return principal{}, &apiError{status: http.StatusUnauthorized, code: codeUnauthenticated, msg: "the basic user name is not the name of the token given as password", invalidToken: true}
	}
	return p, nil
}
