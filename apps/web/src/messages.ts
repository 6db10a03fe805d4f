// The conversation on screen: messages with speaker labels, the reply being streamed (a
// typing indicator until its first token, Markdown as it grows), copy buttons on code, and
// scrolling that follows the reply until the reader scrolls up.

import { renderMarkdown } from './markdown.ts';

/** How close to the bottom (px) still counts as "at the bottom": following resumes there. */
const FOLLOW_SLACK = 48;

export interface StreamingReply {
  readonly el: HTMLElement;
  readonly text: string;
  append(delta: string, tokenId: number | null): void;
  /** Thinking the model wrote: shown folded, above the answer. */
  reason(delta: string): void;
  /** A tool call the model made: its function and arguments. */
  toolCall(name: string, args: string): void;
  /** Ends the reply with its footer (stats, stop reason). */
  finish(footer: HTMLElement): void;
}

export class MessageList {
  /** Follow the bottom as text arrives: cleared when the reader scrolls up, set again at the bottom. */
  private follow = true;
  /** scrollTop right after the last scroll to the end: the reader has scrolled up when it is less. */
  private autoTop = 0;

  constructor(
    private readonly scroller: HTMLElement,
    private readonly list: HTMLOListElement,
  ) {
    scroller.addEventListener('scroll', () => {
      if (scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight <= FOLLOW_SLACK) this.follow = true;
      else this.following();
    });
    list.addEventListener('click', (ev) => {
      const button = (ev.target as HTMLElement).closest<HTMLButtonElement>('button.copy');
      if (button) void copyCode(button);
    });
  }

  get isEmpty(): boolean {
    return this.list.childElementCount === 0;
  }

  clear(): void {
    this.list.replaceChildren();
    this.follow = true;
    this.autoTop = 0;
  }

  addUser(text: string, speaker = 'You'): void {
    const { li, body } = this.message('user', speaker);
    body.textContent = text;
    this.follow = true;
    this.scrollToEnd();
  }

  addAssistant(speaker: string): StreamingReply {
    const { li, body } = this.message('assistant', speaker);
    // Announced when complete (aria-busy), not token by token.
    body.setAttribute('aria-live', 'polite');
    body.setAttribute('aria-busy', 'true');
    body.append(typingIndicator());
    this.scrollToEnd();
    let text = '';
    const ids: number[] = [];
    // Reasoning and tool calls sit beside the answer's Markdown, which is re-rendered as it grows.
    const answer = document.createElement('div');
    let reasoning: HTMLPreElement | undefined;
    const calls = document.createElement('div');
    const show = () => {
      body.querySelector('.typing')?.remove();
      if (!answer.isConnected) body.append(answer, calls);
    };
    return {
      el: li,
      get text() {
        return text;
      },
      append: (delta, tokenId) => {
        text += delta;
        if (tokenId !== null) ids.push(tokenId);
        li.dataset.tokenIds = ids.join(',');
        if (text) {
          show();
          renderInto(answer, text);
        }
        if (this.following()) this.scrollToEnd();
      },
      reason: (delta) => {
        show();
        if (!reasoning) {
          const details = document.createElement('details');
          details.className = 'reasoning';
          const summary = document.createElement('summary');
          summary.textContent = 'Reasoning';
          reasoning = document.createElement('pre');
          details.append(summary, reasoning);
          body.insertBefore(details, answer);
        }
        reasoning.textContent += delta;
        if (this.following()) this.scrollToEnd();
      },
      toolCall: (name, args) => {
        show();
        const call = document.createElement('p');
        call.className = 'tool-call';
        const code = document.createElement('code');
        code.textContent = `${name}(${args})`;
        call.append('Tool call: ', code);
        calls.append(call);
        if (this.following()) this.scrollToEnd();
      },
      finish: (footer) => {
        body.querySelector('.typing')?.remove();
        body.setAttribute('aria-busy', 'false');
        body.removeAttribute('aria-live');
        li.append(footer);
        li.dataset.done = 'true';
        if (this.following()) this.scrollToEnd();
      },
    };
  }

  private message(role: 'user' | 'assistant', speaker: string): { li: HTMLLIElement; body: HTMLElement } {
    const li = document.createElement('li');
    li.className = `msg ${role}`;
    const who = document.createElement('p');
    who.className = 'who';
    who.textContent = speaker;
    const body = document.createElement('div');
    body.className = 'body';
    li.append(who, body);
    this.list.append(li);
    return { li, body };
  }

  /**
   * Checked before each scroll to the end, not only on scroll events: those come a frame
   * late, and a token arriving in between would pull the reader back down.
   */
  private following(): boolean {
    if (this.scroller.scrollTop < this.autoTop - 2) this.follow = false;
    return this.follow;
  }

  private scrollToEnd(): void {
    this.scroller.scrollTop = this.scroller.scrollHeight;
    this.autoTop = this.scroller.scrollTop;
  }
}

function typingIndicator(): HTMLElement {
  const span = document.createElement('span');
  span.className = 'typing';
  const label = document.createElement('span');
  label.className = 'visually-hidden';
  label.textContent = 'Thinking…';
  span.append(label);
  for (let i = 0; i < 3; i++) span.append(document.createElement('i'));
  return span;
}

/** The reply's Markdown, with a copy button on every code block. */
function renderInto(body: HTMLElement, text: string): void {
  const frag = renderMarkdown(document, text);
  for (const pre of frag.querySelectorAll('pre')) {
    const button = document.createElement('button');
    button.type = 'button';
    button.className = 'copy';
    button.textContent = 'Copy';
    button.setAttribute('aria-label', 'Copy code');
    pre.prepend(button);
  }
  body.replaceChildren(frag);
}

async function copyCode(button: HTMLButtonElement): Promise<void> {
  const code = button.parentElement?.querySelector('code')?.textContent ?? '';
  try {
    await navigator.clipboard.writeText(code);
    button.textContent = 'Copied';
  } catch {
    button.textContent = 'Copy failed';
  }
  setTimeout(() => (button.textContent = 'Copy'), 1500);
}
