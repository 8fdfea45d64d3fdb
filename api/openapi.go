package api

import (
	_ "embed"
	"encoding/json"
	"fmt"
	"net/http"

	"gopkg.in/yaml.v3"
)

// openAPIYAML is the OpenAPI 3.0 document of the native API, written by hand next to the
// routes. TestOpenAPIMatchesRoutes keeps it and v1Routes in step; docs/api.md is rendered from
// it (TestAPIDocs).
//
//go:embed openapi.yaml
var openAPIYAML []byte

// openAPIDocument converts the embedded document to the JSON that GET /v1/openapi.json serves.
func openAPIDocument() ([]byte, error) {
	var doc map[string]any
	if err := yaml.Unmarshal(openAPIYAML, &doc); err != nil {
		return nil, fmt.Errorf("api: openapi.yaml: %w", err)
	}
	out, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("api: openapi.yaml to JSON: %w", err)
	}
	return append(out, '\n'), nil
}

func (s *Server) openAPI(w http.ResponseWriter, _ *http.Request, _ *call) error {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-cache")
	_, _ = w.Write(s.openapi)
	return nil
}
