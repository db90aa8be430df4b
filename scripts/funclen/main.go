// Command funclen lists the longest functions of the product code (tests,
// scripts, third-party and generated files excluded) and the largest files, so that a
// change that is meant to make the code easier to read can show it did.
//
//	go run ./scripts/funclen [-n 10] [dir]
package main

import (
	"flag"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

type span struct {
	name  string
	lines int
}

func main() {
	n := flag.Int("n", 10, "how many functions and files to list")
	flag.Parse()
	root := "."
	if flag.NArg() > 0 {
		root = flag.Arg(0)
	}
	funcs, files, err := measure(root)
	if err != nil {
		fmt.Fprintln(os.Stderr, "funclen:", err)
		os.Exit(1)
	}
	fmt.Println("longest functions (lines):")
	for _, s := range top(funcs, *n) {
		fmt.Printf("  %4d  %s\n", s.lines, s.name)
	}
	fmt.Println("largest files (lines):")
	for _, s := range top(files, 5) {
		fmt.Printf("  %4d  %s\n", s.lines, s.name)
	}
}

func top(spans []span, n int) []span {
	sort.Slice(spans, func(i, j int) bool { return spans[i].lines > spans[j].lines })
	return spans[:min(n, len(spans))]
}

// measure walks the product packages: everything but tests, scripts,
// testdata, node_modules and third_party (others' code, carried as it is).
func measure(root string) (funcs, files []span, err error) {
	fset := token.NewFileSet()
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			switch d.Name() {
			case "scripts", "testdata", "node_modules", ".git", "third_party":
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		files = append(files, span{path, fset.Position(f.End()).Line})
		for _, decl := range f.Decls {
			fn, ok := decl.(*ast.FuncDecl)
			if !ok || fn.Body == nil {
				continue
			}
			name := fn.Name.Name
			if fn.Recv != nil && len(fn.Recv.List) > 0 {
				name = recvName(fn.Recv.List[0].Type) + "." + name
			}
			lines := fset.Position(fn.End()).Line - fset.Position(fn.Pos()).Line + 1
			funcs = append(funcs, span{fmt.Sprintf("%s %s", filepath.ToSlash(path), name), lines})
		}
		return nil
	})
	return funcs, files, err
}

func recvName(e ast.Expr) string {
	switch t := e.(type) {
	case *ast.StarExpr:
		return recvName(t.X)
	case *ast.IndexExpr:
		return recvName(t.X)
	case *ast.Ident:
		return t.Name
	}
	return "?"
}
