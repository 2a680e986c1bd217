// The one-source-of-truth audit (ts-morph): a kernel's algorithm lives in its DSL file and nowhere
// else. Parsing dsl/kernels/*.ts with the TypeScript compiler it checks that
//   - every KernelDef a kernel file exports is registered in dsl/kernels/index.ts (KERNELS), and
//     every KERNELS entry is such an export (so `gen` and the plans see the same kernels);
//   - no file there holds CUDA source text (string literals with __global__, asm(, threadIdx, ...);
//   - no file there imports from codegen/, templates/ or runtime/ (the DSL does not know its backends).
// It runs in `retention gen` and in test/codegen-audit.test.ts.

import path from "node:path";
import { Node, Project, SyntaxKind, ts, type SourceFile, type Type } from "ts-morph";
import { REPO_ROOT } from "./gen.ts";

export const KERNELS_DIR = path.join(REPO_ROOT, "dsl", "kernels");
const REGISTRY = "index.ts";
const FORBIDDEN_DIRS = ["codegen", "templates", "runtime"];
/** Text that only CUDA source contains. */
const CUDA_TEXT = /__global__|__device__|__shared__|__syncthreads|\basm\s*(volatile\s*)?\(|threadIdx|blockIdx|blockDim|mma\.sync|ldmatrix|cp\.async|#include\s*[<"]/;

export interface AuditResult {
  /** KernelDefs found: file (relative to the repo) and export name. */
  readonly kernels: readonly { readonly file: string; readonly name: string }[];
  /** Files exporting no KernelDef (shared trace-time helpers). */
  readonly helpers: readonly string[];
  readonly problems: readonly string[];
}

function isKernelDef(t: Type): boolean {
  const named = [t.getAliasSymbol()?.getName(), t.getSymbol()?.getName()];
  if (named.includes("KernelDef")) return true;
  const props = new Set(t.getProperties().map((p) => p.getName()));
  return ["name", "schedule", "scheduleSpace", "build"].every((p) => props.has(p));
}

function moduleSpecifiers(sf: SourceFile): string[] {
  const out: string[] = [];
  for (const d of sf.getImportDeclarations()) out.push(d.getModuleSpecifierValue());
  for (const d of sf.getExportDeclarations()) {
    const m = d.getModuleSpecifierValue();
    if (m) out.push(m);
  }
  for (const c of sf.getDescendantsOfKind(SyntaxKind.CallExpression)) {
    const callee = c.getExpression().getText();
    const arg = c.getArguments()[0];
    if ((callee === "import" || callee === "require") && arg && Node.isStringLiteral(arg)) out.push(arg.getLiteralValue());
  }
  return out;
}

function cudaText(sf: SourceFile, rel: (f: string) => string): string[] {
  const found: string[] = [];
  const check = (n: Node, text: string): void => {
    const m = CUDA_TEXT.exec(text);
    if (m) found.push(`${rel(sf.getFilePath())}:${n.getStartLineNumber()}: a string holds CUDA source text ('${m[0]}')`);
  };
  for (const n of sf.getDescendantsOfKind(SyntaxKind.StringLiteral)) check(n, n.getLiteralValue());
  for (const n of sf.getDescendantsOfKind(SyntaxKind.NoSubstitutionTemplateLiteral)) check(n, n.getLiteralValue());
  for (const n of sf.getDescendantsOfKind(SyntaxKind.TemplateExpression)) check(n, n.getText());
  return found;
}

/** Audit the kernels folder `dir` (default dsl/kernels); the folders kernels may not import from
 * are codegen/, templates/ and runtime/ of the repository two levels above it. */
export function auditKernels(dir: string = KERNELS_DIR): AuditResult {
  const root = path.resolve(dir, "..", "..");
  const rel = (f: string): string => path.relative(root, f);
  const project = new Project({
    // NodeNext in a "type": "module" package makes ts-morph's TypeScript report a false TS1470
    compilerOptions: {
      target: ts.ScriptTarget.ES2022,
      module: ts.ModuleKind.ESNext,
      moduleResolution: ts.ModuleResolutionKind.Bundler,
      allowImportingTsExtensions: true,
      noEmit: true,
      strict: true,
      skipLibCheck: true,
      types: [],
    },
    skipAddingFilesFromTsConfig: true,
  });
  const files = project.addSourceFilesAtPaths(path.join(dir, "*.ts")).sort((a, b) => (a.getFilePath() < b.getFilePath() ? -1 : 1));
  project.resolveSourceFileDependencies();
  const problems: string[] = [];
  const kernels: { file: string; name: string; node: Node }[] = [];
  const helpers: string[] = [];

  for (const sf of files) {
    const file = rel(sf.getFilePath());
    problems.push(...cudaText(sf, rel));
    for (const m of moduleSpecifiers(sf)) {
      const target = m.startsWith(".") ? path.resolve(path.dirname(sf.getFilePath()), m) : null;
      const inside = target ? FORBIDDEN_DIRS.find((d) => !path.relative(path.join(root, d), target).startsWith("..")) : undefined;
      if (inside) problems.push(`${file}: imports '${m}' from ${inside}/ (kernel files may use the DSL only)`);
      if (m === "handlebars" || m === "execa") problems.push(`${file}: imports '${m}' (kernel files may use the DSL only)`);
    }
    if (path.basename(sf.getFilePath()) === REGISTRY) continue;
    let found = 0;
    for (const [name, decls] of sf.getExportedDeclarations()) {
      const d = decls[0];
      if (!d || !Node.isVariableDeclaration(d)) continue;
      // the annotation says it (fast); otherwise ask the type checker
      if (d.getTypeNode()?.getText() !== "KernelDef" && !isKernelDef(d.getType())) continue;
      if (d.getSourceFile() !== sf) continue; // a re-export: counted where it is declared
      kernels.push({ file, name, node: d });
      found++;
    }
    if (found === 0) helpers.push(file);
  }

  const registry = files.find((f) => path.basename(f.getFilePath()) === REGISTRY);
  if (!registry) problems.push(`${rel(path.join(dir, REGISTRY))}: missing (it must export KERNELS: readonly KernelDef[])`);
  else {
    const decl = registry.getVariableDeclaration("KERNELS");
    const init = decl?.getInitializer();
    if (!decl || !decl.isExported() || !init || !Node.isArrayLiteralExpression(init))
      problems.push(`${rel(registry.getFilePath())}: expected \`export const KERNELS: readonly KernelDef[] = [ ... ]\``);
    else {
      const registered = new Set<Node>();
      for (const el of init.getElements()) {
        const sym = Node.isIdentifier(el) ? el.getSymbol() : undefined;
        const target = sym?.isAlias() ? sym.getAliasedSymbol() : sym;
        const d = target?.getDeclarations()[0];
        const k = kernels.find((x) => x.node === d);
        if (!k) problems.push(`${rel(registry.getFilePath())}: KERNELS entry '${el.getText()}' is not a KernelDef exported by a kernel file`);
        else if (registered.has(k.node)) problems.push(`${rel(registry.getFilePath())}: KERNELS lists '${el.getText()}' twice`);
        else registered.add(k.node);
      }
      for (const k of kernels)
        if (!registered.has(k.node)) problems.push(`${k.file}: exports KernelDef '${k.name}', which dsl/kernels/${REGISTRY} does not register in KERNELS`);
    }
  }
  return { kernels: kernels.map(({ file, name }) => ({ file, name })), helpers, problems };
}

export function formatAudit(a: AuditResult): string {
  return [
    `${a.kernels.length} kernels: ${a.kernels.map((k) => `${k.name} (${k.file})`).join(", ")}`,
    `helpers: ${a.helpers.join(", ") || "none"}`,
    ...(a.problems.length ? a.problems.map((p) => `PROBLEM ${p}`) : ["no problems"]),
  ].join("\n");
}
