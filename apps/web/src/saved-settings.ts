// The form remembers itself: the model choice and every setting are kept in localStorage
// on each change and put back on the next visit (query parameters still win).

const KEY = 'webgpu-chat:settings';

type Control = HTMLInputElement | HTMLSelectElement | HTMLTextAreaElement;
type Saved = Record<string, string | boolean>;

function read(): Saved {
  try {
    const v: unknown = JSON.parse(localStorage.getItem(KEY) ?? '{}');
    return v && typeof v === 'object' && !Array.isArray(v) ? (v as Saved) : {};
  } catch {
    return {};
  }
}

/** Restores the controls inside `root` (by id; radio groups by name) and saves them on every change. */
export function rememberSettings(root: HTMLElement): void {
  const controls = [...root.querySelectorAll<Control>('input, select, textarea')].filter((c) => c.type !== 'file' && (c.id || c.type === 'radio'));
  const keyOf = (c: Control) => (c.type === 'radio' ? `radio:${(c as HTMLInputElement).name}` : c.id);
  const saved = read();
  for (const c of controls) {
    const v = saved[keyOf(c)];
    if (v === undefined) continue;
    if (c.type === 'radio') (c as HTMLInputElement).checked = c.value === v;
    else if (c.type === 'checkbox') (c as HTMLInputElement).checked = v === true;
    else if (typeof v === 'string') c.value = v;
  }
  const save = () => {
    const out: Saved = {};
    for (const c of controls) {
      if (c.type === 'radio') {
        if ((c as HTMLInputElement).checked) out[keyOf(c)] = c.value;
      } else out[keyOf(c)] = c.type === 'checkbox' ? (c as HTMLInputElement).checked : c.value;
    }
    try {
      localStorage.setItem(KEY, JSON.stringify(out));
    } catch {
      // Storage full or blocked (private mode): the page works, it just forgets.
    }
  };
  root.addEventListener('input', save);
  root.addEventListener('change', save);
}
