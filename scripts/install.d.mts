// Types of scripts/install.mjs, for test/install-script.test.ts.
export function hiddenByNpm(env?: Record<string, string | undefined>, stderrIsTTY?: boolean, cwd?: string): boolean;
export function isProgress(line: string): boolean;
export interface Sinks {
  log(line: string): void;
  say(line: string): void;
}
export function sinks(stderr: (s: string) => void, progress: ((s: string) => void) | null): Sinks;
export function runSteps(steps: readonly (readonly [string, string, readonly string[]])[], out: Sinks): Promise<number>;
