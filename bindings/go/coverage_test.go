package diffgentor_test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// notWrapped lists the public C functions the binding deliberately does not call, each with the
// reason. It is empty: every function of include/diffgentor.h is reachable from the Go API.
var notWrapped = map[string]string{}

// headerFunctions returns the names of the functions include/diffgentor.h declares: every
// `dg_name(` outside comments (function-pointer typedefs read `(*dg_name)(`, so they do not count).
func headerFunctions(t *testing.T) []string {
	t.Helper()
	src, err := os.ReadFile(filepath.Join("..", "..", "include", "diffgentor.h"))
	if err != nil {
		t.Fatal(err)
	}
	text := regexp.MustCompile(`(?s)/\*.*?\*/`).ReplaceAllString(string(src), "")
	text = regexp.MustCompile(`//[^\n]*`).ReplaceAllString(text, "")
	seen := map[string]bool{}
	var names []string
	for _, m := range regexp.MustCompile(`\b(dg_[A-Za-z0-9_]+)\s*\(`).FindAllStringSubmatch(text, -1) {
		if !seen[m[1]] {
			seen[m[1]] = true
			names = append(names, m[1])
		}
	}
	sort.Strings(names)
	return names
}

// bindingCalls returns the C functions the binding's non-test Go files reach: `C.dg_name` in Go
// code, and `dg_name(` in a cgo preamble (C code the binding compiles, such as the generate
// trampoline that calls dg_pipeline_generate).
func bindingCalls(t *testing.T) map[string][]string {
	t.Helper()
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	calls := map[string][]string{}
	preambleCall := regexp.MustCompile(`\b(dg_[A-Za-z0-9_]+)\s*\(`)
	fset := token.NewFileSet()
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, parser.ParseComments)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(f, func(n ast.Node) bool {
			if sel, ok := n.(*ast.SelectorExpr); ok {
				if x, ok := sel.X.(*ast.Ident); ok && x.Name == "C" && strings.HasPrefix(sel.Sel.Name, "dg_") {
					calls[sel.Sel.Name] = append(calls[sel.Sel.Name], fset.Position(sel.Pos()).String())
				}
			}
			return true
		})
		for _, decl := range f.Decls {
			gen, ok := decl.(*ast.GenDecl)
			if !ok || gen.Tok != token.IMPORT || gen.Doc == nil {
				continue
			}
			for _, spec := range gen.Specs {
				if path, _ := strconv.Unquote(spec.(*ast.ImportSpec).Path.Value); path == "C" {
					for _, m := range preambleCall.FindAllStringSubmatch(gen.Doc.Text(), -1) {
						calls[m[1]] = append(calls[m[1]], name+" (cgo preamble)")
					}
				}
			}
		}
	}
	return calls
}

// Every public C function is reachable from the Go binding, except the explained omissions.
func TestCAPICoverage(t *testing.T) {
	declared := headerFunctions(t)
	if len(declared) < 50 {
		t.Fatalf("found only %d functions in include/diffgentor.h: is the parser broken? %v", len(declared), declared)
	}
	calls := bindingCalls(t)
	isDeclared := map[string]bool{}
	var missing []string
	for _, name := range declared {
		isDeclared[name] = true
		_, called := calls[name]
		_, excused := notWrapped[name]
		switch {
		case !called && !excused:
			missing = append(missing, name)
		case called && excused:
			t.Errorf("%s is in notWrapped but the binding calls it (%s): remove it from the list", name, calls[name][0])
		}
	}
	if len(missing) > 0 {
		t.Errorf("public C functions no non-test Go file of the binding calls (wrap them, or list them "+
			"in notWrapped with the reason): %s", strings.Join(missing, " "))
	}
	for name := range notWrapped {
		if !isDeclared[name] {
			t.Errorf("notWrapped names %s, which include/diffgentor.h does not declare", name)
		}
	}
	for _, want := range []string{"dg_version", "dg_pipeline_generate", "dg_buffer_free", "dg_runtime_options_set"} {
		if !isDeclared[want] {
			t.Errorf("the header parser missed %s", want)
		}
	}
	t.Logf("%d C functions declared, all reachable from the Go binding (%d deliberately not: %v)",
		len(declared), len(notWrapped), notWrapped)
}
