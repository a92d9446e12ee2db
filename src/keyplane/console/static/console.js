// The console's only script of its own: the copy button for a secret shown once.
document.addEventListener("click", async (event) => {
  const button = event.target.closest("button[data-copy]");
  if (!button) return;
  const input = document.getElementById(button.dataset.copy);
  const status = button.parentElement.querySelector(".copied");
  input.select();
  try {
    await navigator.clipboard.writeText(input.value);
    status.textContent = "Copied to the clipboard.";
  } catch {
    status.textContent = "Press Ctrl+C (⌘C) to copy the selected secret.";
  }
});
